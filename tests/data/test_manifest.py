"""Tests of segrenorm.data.manifest: validating a cache's manifest and summarizing it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from segrenorm.data.manifest import check_fields, open_manifest, summarize
from segrenorm.errors import CacheError


def test_open_manifest_refuses_broken_caches(tmp_path: Path, tiny_kit: SimpleNamespace) -> None:
    with pytest.raises(CacheError, match="does not exist; create it with segrenorm prepare"):
        open_manifest(tmp_path / "nope")
    out = tiny_kit.cache(tmp_path / "cache")
    manifest_path = out / "manifest.json"
    good = json.loads(manifest_path.read_text())

    def expect(manifest: object, message: str) -> None:
        manifest_path.write_text(json.dumps(manifest))
        with pytest.raises(CacheError, match=message):
            open_manifest(out)

    expect({**good, "complete": False}, "is incomplete .*re-run segrenorm prepare")
    expect({**good, "format_version": 9}, "has format_version 9, this segrenorm reads 1")
    expect({k: v for k, v in good.items() if k != "slice_shape"}, "lacks slice_shape")
    expect({**good, "slice_shape": [16, 32]}, r"A/images.npy holds float32 .* expects float32")
    subjects = [{**good["subjects"][0], "first_row": 3}, good["subjects"][1]]
    expect({**good, "subjects": subjects}, "first_row values are not contiguous")
    expect([1, 2], "does not hold a JSON object")
    one_site = {**good, "sites": {"A": good["sites"]["A"]}}
    expect(one_site, r"names 1 site\(s\) \['A'\]; a cache holds 2 to 26; re-run segrenorm")
    many = {**good, "sites": {f"K{i}": f"s{i}" for i in range(27)}}
    expect(many, r"names 27 site\(s\) .*a cache holds 2 to 26; re-run segrenorm prepare")
    expect(
        {**good, "bias_correction": {"method": "n3"}},
        r"invalid bias_correction \(bias correction 'n3' is unknown: use one of n4, none\); re-run",
    )
    expect({**good, "bias_correction": "n4"}, "invalid bias_correction .*must be a mapping")
    expect(
        {**good, "modality": "ct"},
        r"manifest.json: unknown modality 'ct' \(this segrenorm knows mri, oct\); re-run",
    )
    manifest_path.write_text(json.dumps({**good, "modality": "oct"}))
    assert open_manifest(out)["modality"] == "oct"
    assert "modality" not in good  # a cache from before OCT opens, and reads as MRI
    manifest_path.write_text("{not json")
    with pytest.raises(CacheError, match="is not valid JSON"):
        open_manifest(out)
    manifest_path.write_text(json.dumps(good))
    open_manifest(out)
    (out / "B" / "masks.npy").unlink()
    with pytest.raises(CacheError, match=r"lacks B/masks.npy; re-run segrenorm prepare"):
        open_manifest(out)
    manifest_path.unlink()
    with pytest.raises(CacheError, match=r"has no manifest.json"):
        open_manifest(out)


def test_check_fields_refuses_what_the_reader_needs(tiny_cache: Path) -> None:
    good = open_manifest(tiny_cache)
    check_fields(tiny_cache, good)

    def expect(changes: dict[str, object], message: str) -> None:
        with pytest.raises(CacheError, match=message):
            check_fields(tiny_cache, {**good, **changes})

    expect({"n_classes": 0}, "'n_classes' must be a positive integer, got 0")
    expect({"n_classes": True}, "'n_classes' must be a positive integer, got True")
    expect({"class_names": ["only"]}, r"'class_names' must list 4 names, got \['only'\]")
    subjects = [{**good["subjects"][0], "split": "dev"}, *good["subjects"][1:]]
    expect({"subjects": subjects}, r"subjects\[0\] needs a 'subject' name, a 'split' of train")
    subjects = [good["subjects"][0], {**good["subjects"][1], "fold": False}]
    expect({"subjects": subjects}, r"subjects\[1\] needs .* an integer 'fold'")


def test_summarize_counts_slices_and_subjects_per_site_and_split(tiny_cache: Path) -> None:
    manifest = open_manifest(tiny_cache)
    assert summarize(manifest, "cache/").splitlines() == [
        "cache cache/: axial slices 40x40, 4 classes",
        "  A (1.5T): train 6 slices / 1 subjects, test 0 slices / 0 subjects",
        "  B (3T): train 6 slices / 1 subjects, test 0 slices / 0 subjects",
    ]
    moved = [{**s, "split": "test"} if s["site"] == "B" else s for s in manifest["subjects"]]
    text = summarize({**manifest, "has_labels": False, "subjects": moved}, "c")
    assert text.splitlines()[0] == "cache c: axial slices 40x40, 4 classes (no labels)"
    assert (
        text.splitlines()[2] == "  B (3T): train 0 slices / 0 subjects, test 6 slices / 1 subjects"
    )
    corrected = {**manifest, "bias_correction": {"method": "n4", "shrink": 2}}
    first = summarize(corrected, "c").splitlines()[0]
    assert first == "cache c: axial slices 40x40, 4 classes, bias-corrected (n4, shrink 2)"
    oct_cache = {**manifest, "modality": "oct"}
    first = summarize(oct_cache, "c").splitlines()[0]
    assert first == "cache c: OCT (retina mask, background kept) axial slices 40x40, 4 classes"
    assert summarize({**manifest, "modality": "mri"}, "c") == summarize(manifest, "c")
