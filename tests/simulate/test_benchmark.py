"""Tests of the built-in two-scanner T1 benchmark (anatomy, scanners, writer, preview, CLI)."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from segrenorm.cli import simulate_cmd
from segrenorm.errors import ConfigError, InputError
from segrenorm.simulate.anatomy import (
    Anatomy,
    Variability,
    load_mni152_anatomy,
    tissue_labels,
    warp_anatomy,
)
from segrenorm.simulate.benchmark import _plan, render_subject, simulate_t1
from segrenorm.simulate.preview import preview_subject, save_subject_preview
from segrenorm.simulate.scanners import SCANNERS, ScannerProfile, apply_scanner, load_scanner
from segrenorm.simulate.subjects import read_subjects

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CLEAN = ScannerProfile(
    name="clean", csf=0.3, gm=0.6, wm=1.0, bias_amplitude=0.0, noise=0.0, texture=0.0
)


def _nifti(path: Path) -> nib.Nifti1Image:
    image = nib.load(str(path))
    assert isinstance(image, nib.Nifti1Image)
    return image


@pytest.fixture(scope="module")
def template_crop() -> Anatomy:
    return load_mni152_anatomy(2).crop((slice(25, 75), slice(30, 90), slice(30, 60)))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "t1"
    simulate_t1(out, n_subjects=4, test_fraction=0.5, val_fraction=0.0, seed=7)
    return out


# --- scanner profiles -----------------------------------------------------------------------


def test_builtin_scanners_differ_as_documented() -> None:
    low, high = SCANNERS["1.5T"], SCANNERS["3T"]
    assert low.noise == pytest.approx(0.05) and high.noise == pytest.approx(0.02)
    assert low.bias_amplitude > high.bias_amplitude
    assert low.fwhm_through_mm > high.fwhm_through_mm
    assert ScannerProfile.from_dict(low.to_dict()) == low


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "csf": 0.2, "gm": 0.5, "wm": 1, "colour": 1}, r"unknown field.*'colour'"),
        ({"name": "x", "csf": 0.2, "gm": 0.5}, r"missing required field\(s\) wm"),
        ({"name": "x", "csf": 0.2, "gm": 0.5, "wm": 1, "noise": 1.5}, r"'noise' = 1.5 is outside"),
        ({"name": "x", "csf": 0.2, "gm": "bright", "wm": 1}, r"'gm' must be a finite number"),
        ({"name": "x", "csf": 0.2, "gm": 0.5, "wm": 1, "gamma": True}, r"'gamma' must be a"),
        ({"name": "x", "csf": 0.2, "gm": 0.5, "wm": 1, "slice_axis": 1.0}, r"must be an integer"),
        ({"name": "x", "csf": 0.2, "gm": 0.5, "wm": float("nan")}, r"'wm' must be a finite"),
        ({"name": "a/b", "csf": 0.2, "gm": 0.5, "wm": 1}, r"field 'name' must be"),
        ({"name": "x", "csf": 0.2, "gm": 0.5, "wm": 1, "scale": 3e4}, r"int16 headroom"),
        ({"name": "x", "csf": 0.2, "gm": 0.5, "wm": 1, "slice_axis": 3}, r"'slice_axis' = 3"),
    ],
)
def test_profile_validation_names_the_field(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ScannerProfile.from_dict(data, source="my.yaml")


def test_profile_from_dict_rejects_non_mapping() -> None:
    with pytest.raises(ConfigError, match="expected a mapping of fields, got list"):
        ScannerProfile.from_dict([1, 2])  # type: ignore[arg-type]


def test_load_scanner_from_files_and_errors(tmp_path: Path) -> None:
    (tmp_path / "siemens.yaml").write_text("csf: 0.2\ngm: 0.5\nwm: 1.0\nnoise: 0.03\n")
    profile = load_scanner(tmp_path / "siemens.yaml")
    assert profile.name == "siemens" and profile.noise == 0.03
    (tmp_path / "ge.json").write_text(json.dumps({**CLEAN.to_dict(), "name": "GE"}))
    assert load_scanner(str(tmp_path / "ge.json")).name == "GE"
    assert load_scanner("3T") is SCANNERS["3T"]
    with pytest.raises(
        ConfigError, match=r"unknown scanner '9T': use one of 1.5T, 1T, 3T, 7T, PI, SA, SV or"
    ):
        load_scanner("9T")
    (tmp_path / "bad.yaml").write_text("csf: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: cannot read scanner profile"):
        load_scanner(tmp_path / "bad.yaml")
    (tmp_path / "neg.yaml").write_text("csf: -1\ngm: 0.5\nwm: 1.0\n")
    with pytest.raises(ConfigError, match=r"neg.yaml: .*'csf' = -1 is outside"):
        load_scanner(tmp_path / "neg.yaml")


# --- rendering --------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", [0.02, 0.05])
def test_rician_noise_level_matches_profile(noise: float, tiny_kit: SimpleNamespace) -> None:
    phantom = tiny_kit.anatomy()
    scanner = dataclasses.replace(CLEAN, noise=noise, scale=1000.0)
    image = apply_scanner(
        phantom.csf, phantom.gm, phantom.wm, phantom.texture, scanner, phantom.zooms,
        np.random.default_rng(0),
    )  # fmt: skip
    sigma = noise * 1000.0
    # Zero signal: Rician reduces to Rayleigh, whose mean is sigma * sqrt(pi / 2).
    background = image[phantom.support == 0]
    assert background.mean() / np.sqrt(np.pi / 2) == pytest.approx(sigma, rel=0.05)
    # High signal: nearly Gaussian around the WM level.
    core = image[tissue_labels(phantom) == 3]
    assert core.std() == pytest.approx(sigma, rel=0.1)
    assert core.mean() == pytest.approx(1000.0, rel=0.01)


def test_bias_blur_and_texture_each_change_the_image(tiny_kit: SimpleNamespace) -> None:
    phantom = tiny_kit.anatomy()
    args = (phantom.csf, phantom.gm, phantom.wm, phantom.texture)
    clean = apply_scanner(*args, CLEAN, phantom.zooms, np.random.default_rng(0))
    wm = tissue_labels(phantom) == 3
    assert np.ptp(clean[wm]) == pytest.approx(0.0, abs=1e-3)  # flat without bias or texture
    biased = apply_scanner(
        *args, dataclasses.replace(CLEAN, bias_amplitude=0.2), phantom.zooms,
        np.random.default_rng(0),
    )  # fmt: skip
    assert np.ptp(biased[wm]) > 0.1 * clean[wm].mean()
    thick = apply_scanner(
        *args, dataclasses.replace(CLEAN, fwhm_through_mm=8.0), phantom.zooms,
        np.random.default_rng(0),
    )  # fmt: skip
    # Blur along z only: edges soften across slices, not within them.
    assert np.abs(np.diff(thick, axis=2)).max() < 0.7 * np.abs(np.diff(clean, axis=2)).max()
    assert np.abs(np.diff(thick, axis=0)).max() == pytest.approx(
        np.abs(np.diff(clean, axis=0)).max(), rel=0.35
    )


def test_template_anatomy_is_consistent() -> None:
    anatomy = load_mni152_anatomy(2)
    assert anatomy.shape == (99, 117, 95)
    assert anatomy.zooms == (2.0, 2.0, 2.0)
    total = anatomy.csf + anatomy.gm + anatomy.wm
    assert total.max() <= 1.0 + 1e-6 and set(np.unique(total > 0.5)) == {False, True}
    labels = tissue_labels(anatomy)
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert np.all(labels[total < 0.5] == 0)
    assert 0.0 < np.abs(anatomy.texture).mean() < 0.1


def test_from_template_rejects_bad_arrays() -> None:
    ones = np.ones((4, 4, 4), dtype=np.float32)
    with pytest.raises(InputError, match=r"template gm: shape \(4, 4\) does not match"):
        Anatomy.from_template(ones, ones[0], ones, ones, np.eye(4))
    bad = ones.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="template mask: holds NaN"):
        Anatomy.from_template(ones, ones, ones, bad, np.eye(4))
    with pytest.raises(ConfigError, match="resolution 3 is not supported"):
        load_mni152_anatomy(3)


def test_zero_variability_is_the_identity(template_crop: Anatomy) -> None:
    still = Variability(0.0, 0.0, 0.0, 0.0, 0.0, 20.0)
    warped = warp_anatomy(template_crop, 5, still)
    np.testing.assert_allclose(warped.gm, template_crop.gm, atol=1e-5)
    np.testing.assert_allclose(warped.texture, template_crop.texture, atol=1e-5)


def test_render_subject_anatomy_is_shared_between_scanners(template_crop: Anatomy) -> None:
    low, labels_low = render_subject(template_crop, 11, SCANNERS["1.5T"], np.random.default_rng(1))
    high, labels_high = render_subject(template_crop, 11, SCANNERS["3T"], np.random.default_rng(1))
    again, _ = render_subject(template_crop, 11, SCANNERS["3T"], np.random.default_rng(1))
    _, labels_other = render_subject(template_crop, 12, SCANNERS["3T"], np.random.default_rng(1))
    assert low.dtype == np.float32 and labels_low.dtype == np.uint8
    np.testing.assert_array_equal(labels_low, labels_high)
    np.testing.assert_array_equal(high, again)
    assert not np.array_equal(labels_high, labels_other)
    assert set(np.unique(labels_low)) <= {0, 1, 2, 3}

    def contrast(image: np.ndarray) -> float:
        wm, gm = np.median(image[labels_low == 3]), np.median(image[labels_low == 2])
        return float((wm - gm) / wm)

    assert contrast(high) > contrast(low) + 0.08


# --- the benchmark writer ---------------------------------------------------------------------


def test_plan_splits_twenty_subjects_as_specified() -> None:
    ids, test, val, src, tgt = _plan(20, 0.3, 0.0, seed=0)
    assert len(ids) == 20 and (len(test), len(val), len(src), len(tgt)) == (6, 0, 7, 7)
    assert set(test) | set(src) | set(tgt) == set(ids)
    assert not (set(test) & set(src)) and not (set(src) & set(tgt)) and not (set(test) & set(tgt))


def test_plan_draws_validation_after_test_so_test_subjects_stay() -> None:
    ids, test, val, src, tgt = _plan(20, 0.3, 0.15, seed=0)
    # 20 * 0.15 = 3 validation subjects; the 11 left train, 6 on the source site.
    assert (len(test), len(val), len(src), len(tgt)) == (6, 3, 6, 5)
    assert test == _plan(20, 0.3, 0.0, seed=0)[1]
    assert sorted(test + val + src + tgt) == ids
    with pytest.raises(ConfigError, match=r"leaves 0 training subject\(s\)"):
        _plan(4, 0.5, 0.75, seed=0)


def test_validation_subjects_are_paired_and_get_clean_truth(tmp_path: Path) -> None:
    out = tmp_path / "t1"
    simulate_t1(out, n_subjects=4, test_fraction=0.25, val_fraction=0.25, seed=7)
    with (out / "subjects.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    val = [r for r in rows if r["split"] == "val"]
    assert (
        sorted(r["site"] for r in val) == ["1.5T", "3T"] and len({r["subject"] for r in val}) == 1
    )
    (target,) = [r for r in val if r["site"] == "3T"]
    assert target["clean"] and (out / target["clean"]).is_file()
    meta = json.loads((out / "simulation.json").read_text())
    assert meta["counts"]["val"] == 1 and meta["splits"]["val"] == [val[0]["subject"]]
    assert meta["counts"]["volumes"] == 2 * 2 + 2


def test_dataset_layout_and_splits(dataset: Path) -> None:
    with (dataset / "subjects.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["subject", "site", "image", "label", "split", "clean"]
    sites = [r["site"] for r in rows]
    assert sites == sorted(sites, key=["1.5T", "3T"].index)  # source rows first
    train = {s: {r["subject"] for r in rows if r["site"] == s and r["split"] == "train"}
             for s in ("1.5T", "3T")}  # fmt: skip
    assert len(train["1.5T"]) == len(train["3T"]) == 1
    assert not train["1.5T"] & train["3T"]
    test = {(r["subject"], r["site"]) for r in rows if r["split"] == "test"}
    test_ids = {s for s, _ in test}
    assert len(test_ids) == 2 and test == {(s, site) for s in test_ids for site in ("1.5T", "3T")}
    meta = json.loads((dataset / "simulation.json").read_text())
    assert meta["seed"] == 7 and meta["source"]["name"] == "1.5T"
    assert meta["counts"] == {
        "subjects": 4, "test": 2, "val": 0, "train_source": 1, "train_target": 1, "volumes": 6,
        "clean": 2,
    }  # fmt: skip


def test_outputs_load_with_the_mni_geometry(dataset: Path) -> None:
    from nilearn.datasets import load_mni152_template

    mni_affine = load_mni152_template(resolution=2).affine
    entries = read_subjects(dataset / "subjects.csv")
    for entry in entries:
        image, label = (
            _nifti(entry.image),
            _nifti(entry.label),
        )
        assert image.shape == label.shape == (99, 117, 95)
        np.testing.assert_allclose(image.affine, mni_affine)
        np.testing.assert_allclose(label.affine, mni_affine)
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        assert set(np.unique(np.asarray(label.dataobj))) <= {0, 1, 2, 3}
    by_site = {(e.subject, e.site): e for e in entries if e.split == "test"}
    for subject in {s for s, _ in by_site}:
        a = np.asarray(_nifti(by_site[(subject, "1.5T")].label).dataobj)
        b = np.asarray(_nifti(by_site[(subject, "3T")].label).dataobj)
        np.testing.assert_array_equal(a, b)
        low = _nifti(by_site[(subject, "1.5T")].image).get_fdata()
        high = _nifti(by_site[(subject, "3T")].image).get_fdata()
        assert not np.array_equal(low, high)


def test_same_seed_same_bytes_even_with_workers_and_overwrite(
    dataset: Path, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    simulate_t1(
        out, n_subjects=4, test_fraction=0.5, val_fraction=0.0, seed=7, workers=2, overwrite=True
    )
    first = sorted(p.relative_to(dataset) for p in dataset.rglob("*") if p.is_file())
    second = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert first == second and Path("stale.txt") not in second
    for rel in first:
        assert (dataset / rel).read_bytes() == (out / rel).read_bytes(), rel
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left over


def test_refuses_non_empty_or_file_output(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match=r"output folder is not empty; pass overwrite=True"):
        simulate_t1(tmp_path, n_subjects=2)
    assert (tmp_path / "keep.txt").read_text() == "mine"
    with pytest.raises(InputError, match=r"keep.txt: exists and is not a folder"):
        simulate_t1(tmp_path / "keep.txt", n_subjects=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_subjects": 0}, r"n_subjects=0 must be a positive integer"),
        ({"test_fraction": 1.5}, r"test_fraction=1.5 must lie in \[0, 1\]"),
        ({"resolution": 3}, r"resolution=3 is not supported"),
        ({"seed": -1}, r"seed=-1 must be a non-negative integer"),
        ({"workers": 0}, r"workers=0 must be a positive integer"),
        ({"source": "3T"}, r"both named '3T'"),
        ({"target": "9T"}, r"unknown scanner '9T'"),
        (
            {"source": dataclasses.replace(SCANNERS["1.5T"], name="3T-clean")},
            r"source scanner '3T-clean' has the name of the target's clean-render folder",
        ),
        ({"n_subjects": 3, "test_fraction": 0.6}, r"leaves 1 training subject"),
    ],
)
def test_simulate_rejects_bad_options(
    tmp_path: Path, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        simulate_t1(tmp_path / "out", **kwargs)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_read_subjects_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"subjects.csv: subject listing not found"):
        read_subjects(tmp_path / "subjects.csv")
    (tmp_path / "a.csv").write_text("subject,site,image\nsub-001,3T,x.nii.gz\n")
    with pytest.raises(InputError, match=r"a.csv: missing column\(s\) label, split; expected "
                       r"subject,site,image,label,split\[,clean\]"):  # fmt: skip
        read_subjects(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("subject,site,image,label,split\ns,3T,x,y,dev\n")
    with pytest.raises(InputError, match=r"b.csv, line 2: split 'dev' is not train, val, test"):
        read_subjects(tmp_path / "b.csv")


# --- preview and command line -----------------------------------------------------------------


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="segrenorm")
    simulate_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_preview_command_writes_png(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "figs" / "preview.png"
    assert _cli(["simulate", "preview", str(dataset), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(InputError, match=r"subject 'sub-999' is not a test subject"):
        preview_subject(dataset, tmp_path / "x.png", subject="sub-999")
    assert not (tmp_path / "x.png").exists()


def test_preview_rejects_mismatched_rows(tmp_path: Path) -> None:
    labels = np.zeros((4, 4, 4), dtype=np.uint8)
    with pytest.raises(InputError, match=r"image 'a' has shape \(3, 4, 4\) but labels"):
        save_subject_preview([("a", np.zeros((3, 4, 4)))], labels, tmp_path / "p.png")
    with pytest.raises(InputError, match="no image rows given"):
        save_subject_preview([], labels, tmp_path / "p.png")


def test_t1_command_reports_bad_scanner(tmp_path: Path) -> None:
    argv = ["simulate", "t1", "--out", str(tmp_path / "o"), "--source", "nope.yaml"]
    with pytest.raises(ConfigError, match=r"unknown scanner 'nope.yaml'"):
        _cli(argv)


def test_preview_reports_missing_volume(tmp_path: Path) -> None:
    rows = "".join(
        f"sub-001,{site},images/{site}/sub-001_T1w.nii.gz,labels/{site}/sub-001_dseg.nii.gz,test\n"
        for site in ("1.5T", "3T")
    )
    (tmp_path / "subjects.csv").write_text("subject,site,image,label,split\n" + rows)
    with pytest.raises(InputError, match=r"sub-001_T1w.nii.gz: listed in subjects.csv but missing"):
        preview_subject(tmp_path, tmp_path / "p.png")
    header = "subject,site,image,label,split\n"
    (tmp_path / "subjects.csv").write_text(header + rows.split("\n")[0] + "\n")
    with pytest.raises(InputError, match=r"lists 1 site\(s\) \(1.5T\); a preview needs exactly"):
        preview_subject(tmp_path, tmp_path / "p.png")
    (tmp_path / "subjects.csv").write_text(header + rows.replace(",test", ",train"))
    with pytest.raises(InputError, match=r"no test subject is listed on both sites 1.5T, 3T"):
        preview_subject(tmp_path, tmp_path / "p.png")
