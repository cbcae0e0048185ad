"""Paired scores against the noisy and the clean target truth, on a tiny study made here."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from segrenorm.data.listing import read_listing
from segrenorm.data.prepare import prepare_cache
from segrenorm.errors import InputError
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.paired import clean_target_slices, paired_scores
from segrenorm.volumes.bias import BiasCorrection
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.readwrite import save_image, save_label

SHAPE = (20, 22, 8)
NAMES = ["background", "csf", "gm", "wm"]


def _subject(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels of three shells and their clean target-scanner image (no noise, no bias)."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE).astype(np.float64)
    centre = np.array([9.5, 10.5, 3.5]) + rng.uniform(-1, 1, 3)
    stretch = np.array([1.0, 1.1, 1.5])[:, None, None, None]
    radius = np.sqrt((((grid - centre[:, None, None, None]) / stretch) ** 2).sum(0))
    labels = np.zeros(SHAPE, np.uint8)
    labels[radius <= 8] = 1
    labels[radius <= 6] = 2
    labels[radius <= 3.5] = 3
    clean = 1000.0 * np.array([0.0, 0.25, 0.55, 1.0])[labels]
    return clean, labels


def _write_study(root: Path, *, noise: float, with_clean: bool = True) -> Path:
    """Two train subjects per site, two held-out ones on both; returns the listing CSV."""
    geometry = Geometry.from_affine(np.diag([2.0, 2.0, 2.0, 1.0]), SHAPE)
    rows = ["subject,site,image,label,split" + (",clean" if with_clean else "")]
    plan = [
        ("a0", "src"),
        ("a1", "src"),
        ("b0", "tgt"),
        ("b1", "tgt"),
        ("t0", "both"),
        ("t1", "both"),
    ]
    for k, (name, where) in enumerate(plan):
        clean, labels = _subject(k)
        rng = np.random.default_rng(100 + k)
        for site in ("src", "tgt"):
            if where not in (site, "both"):
                continue
            gain = 0.5 if site == "src" else 1.0
            scan = np.abs(gain * clean + rng.normal(0, noise * 1000.0, SHAPE))
            image = save_image(
                scan.astype(np.float32), root / site / f"{name}.nii.gz", geometry=geometry
            )
            label = save_label(labels, root / site / f"{name}_dseg.nii.gz", geometry=geometry)
            split = "test" if where == "both" else "train"
            row = f"{name},{site},{image.relative_to(root)},{label.relative_to(root)},{split}"
            if with_clean:
                extra = ""
                if site == "tgt" and where == "both":
                    path = root / "tgt-clean" / f"{name}.nii.gz"
                    extra = str(
                        save_image(clean.astype(np.float32), path, geometry=geometry).relative_to(
                            root
                        )
                    )
                row += f",{extra}"
            rows.append(row)
    listing = root / "subjects.csv"
    listing.write_text("\n".join(rows) + "\n")
    return listing


def _prepare(listing: Path, out: Path) -> EvalData:
    cache = prepare_cache(
        read_listing(listing), out, class_names=NAMES, pad_multiple=8, val_fraction=0.0,
        bias_correction=BiasCorrection(method="none"), progress=False,
    )  # fmt: skip
    return EvalData.from_cache(cache)


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("paired")
    listing = _write_study(root, noise=0.05)
    return SimpleNamespace(root=root, listing=listing, data=_prepare(listing, root / "cache"))


def _as_source_rows(data: EvalData, target_rows: np.ndarray) -> np.ndarray:
    """Target-aligned slices put on the source rows of the same subject and slice."""
    src, tgt = data.paired_rows()
    out = np.full(data.source.images.shape, -1.0, np.float32)
    out[src] = target_rows[tgt]
    return out


def test_listing_and_manifest_record_the_clean_render(study: SimpleNamespace) -> None:
    records = {(r.subject, r.site): r for r in read_listing(study.listing)}
    assert records["t0", "tgt"].clean == (study.root / "tgt-clean" / "t0.nii.gz").resolve()
    assert records["t0", "src"].clean is None and records["b0", "tgt"].clean is None
    entries = {(s["subject"], s["site"]): s for s in study.data.cache.manifest["subjects"]}
    assert entries["t1", "B"]["clean"] == str(study.root.resolve() / "tgt-clean" / "t1.nii.gz")
    assert entries["t1", "A"]["clean"] is None


def test_clean_slices_use_the_target_scans_scaling_and_foreground(study: SimpleNamespace) -> None:
    data = study.data
    found = clean_target_slices(data)
    assert found is not None
    slices, present = found
    assert present.all()
    entries = {s["subject"]: s for s in data.cache.manifest["subjects"] if s["site"] == "B"}
    for row in range(len(data.target)):
        subject = str(data.target.subjects[row])
        clean, _ = _subject(int(subject[1]) + 4)  # t0, t1 are the 5th and 6th subjects
        low, high = entries[subject]["scaling"]["low"], entries[subject]["scaling"]["high"]
        want = np.clip((clean[:, :, data.target.index[row]] - low) / (high - low) * 2 - 1, -1, 1)
        got = slices[row]
        # The slice is padded symmetrically to the cache's shape (the extra pixel after).
        top = (got.shape[0] - SHAPE[0]) // 2
        left = (got.shape[1] - SHAPE[1]) // 2
        inside = data.target.masks[row][top : top + SHAPE[0], left : left + SHAPE[1]]
        want = np.where(inside, want, -1.0)
        np.testing.assert_allclose(
            got[top : top + SHAPE[0], left : left + SHAPE[1]], want, atol=1e-6
        )
        assert (got[~data.target.masks[row]] == -1.0).all()


def test_scores_against_both_truths_match_hand_computations(
    study: SimpleNamespace, eval_kit: SimpleNamespace
) -> None:
    data = study.data
    found = clean_target_slices(data)
    assert found is not None
    clean = found[0]
    oracle = _as_source_rows(data, data.target.images)
    perfect = _as_source_rows(data, clean)
    result = paired_scores(data, {"none": data.source.images, "oracle": oracle, "perfect": perfect})
    assert result is not None
    assert result["mask"] == "target labels > 0" and result["clean"]["n_subjects"] == 2
    none = result["methods"]["none"]
    for key, want in (("noisy", eval_kit.paired(data, data.source.images)),
                      ("clean", eval_kit.paired(data, data.source.images, clean))):  # fmt: skip
        scores = none if key == "noisy" else none["clean"]
        for metric in ("ssim", "psnr", "mae"):
            assert scores[metric] == pytest.approx(want[metric], rel=1e-6), (key, metric)
    # The clean truth against itself: SSIM 1, MAE 0, PSNR infinite.
    assert result["methods"]["perfect"]["clean"]["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert result["methods"]["perfect"]["clean"]["mae"] == 0.0
    assert result["methods"]["perfect"]["clean"]["psnr"] == float("inf")
    # A method equal to the noisy target scores exactly the noisy-vs-clean figures, and the
    # clean render scored against the noisy truth gives the same (symmetric) numbers.
    noisy_vs_clean = result["clean"]["target"]
    for metric in ("ssim", "psnr", "mae"):
        assert result["methods"]["oracle"]["clean"][metric] == noisy_vs_clean[metric]
        assert result["methods"]["perfect"][metric] == pytest.approx(
            noisy_vs_clean[metric], rel=1e-12
        )
    assert result["methods"]["oracle"]["ssim"] == pytest.approx(1.0, abs=1e-12)
    assert 0.3 < noisy_vs_clean["ssim"] < 0.99  # 5 % noise: the two truths really differ


def test_noise_free_target_makes_both_truths_identical(tmp_path: Path) -> None:
    data = _prepare(_write_study(tmp_path, noise=0.0), tmp_path / "cache")
    found = clean_target_slices(data)
    assert found is not None
    np.testing.assert_allclose(found[0], data.target.images, atol=1e-6)
    result = paired_scores(data, {"none": data.source.images})
    assert result is not None
    none = result["methods"]["none"]
    for metric in ("ssim", "psnr", "mae"):
        assert none["clean"][metric] == pytest.approx(none[metric], rel=1e-5)


def test_the_brain_mask_is_label_defined(study: SimpleNamespace) -> None:
    data = study.data
    # Change the target only outside the labels: the scores must not move.
    src, tgt = data.paired_rows()
    base = paired_scores(data, {"none": data.source.images})
    outside = data.target.labels == 0
    altered = data.target.images.copy()
    altered[outside] = 0.7
    changed = dataclasses.replace(data, target=dataclasses.replace(data.target, images=altered))
    after = paired_scores(changed, {"none": data.source.images})
    assert base is not None and after is not None
    assert after["methods"]["none"]["mae"] == base["methods"]["none"]["mae"]
    assert src.size and tgt.size


def test_caches_without_clean_renders_report_the_noisy_truth_only(tmp_path: Path) -> None:
    data = _prepare(_write_study(tmp_path, noise=0.05, with_clean=False), tmp_path / "cache")
    assert all(s.get("clean") is None for s in data.cache.manifest["subjects"])
    assert clean_target_slices(data) is None
    result = paired_scores(data, {"none": data.source.images})
    assert result is not None and "clean" not in result and "clean" not in result["methods"]["none"]
    # A manifest from before the column existed (no key at all) reads the same way.
    manifest_path = data.cache.path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for entry in manifest["subjects"]:
        del entry["clean"]
    manifest_path.write_text(json.dumps(manifest))
    assert clean_target_slices(EvalData.from_cache(data.cache.path)) is None


def test_a_missing_or_misshapen_clean_render_is_reported(tmp_path: Path) -> None:
    listing = _write_study(tmp_path, noise=0.05)
    data = _prepare(listing, tmp_path / "cache")
    clean = tmp_path / "tgt-clean" / "t0.nii.gz"
    moved = tmp_path / "t0-away.nii.gz"
    shutil.move(clean, moved)
    missing = r"t0.nii.gz: the clean render of target subject t0, recorded in .*manifest.json"
    with pytest.raises(InputError, match=missing + ", does not exist; restore it"):
        clean_target_slices(data)
    geometry = Geometry.from_affine(np.diag([2.0, 2.0, 2.0, 1.0]), (20, 22, 6))
    save_image(
        np.arange(20 * 22 * 6, dtype=np.float32).reshape(20, 22, 6), clean, geometry=geometry
    )
    grid = (
        r"t0.nii.gz: on the cache's grid it is \(20, 22, 6\), its target scan .* is \(20, 22, 8\)"
    )
    with pytest.raises(InputError, match=grid + "; a clean render must share"):
        paired_scores(data, {"none": data.source.images})


def test_results_csv_lists_the_clean_scores(study: SimpleNamespace) -> None:
    from segrenorm.report.render import csv_rows

    result = paired_scores(study.data, {"none": study.data.source.images})
    assert result is not None
    rows = csv_rows({"paired": result})
    clean = result["methods"]["none"]["clean"]
    assert ("paired-clean", "none", "ssim", "", clean["ssim"]) in rows
    assert ("paired-clean", "none", "mae_std", "", clean["mae_std"]) in rows
    assert len([r for r in rows if r[0] == "paired-clean"]) == 6


def test_a_listed_clean_render_must_exist(tmp_path: Path) -> None:
    (tmp_path / "img.nii.gz").write_bytes(b"")
    listing = tmp_path / "list.csv"
    listing.write_text(
        "subject,site,image,clean\nsub-1,A,img.nii.gz,gone.nii.gz\nsub-2,A,img.nii.gz,\n"
    )
    with pytest.raises(InputError, match=r"list.csv: 1 bad row.*line 2: clean file .*gone.nii.gz"):
        read_listing(listing)
    listing.write_text("subject,site,image,clean\nsub-2,A,img.nii.gz,\n")
    assert read_listing(listing)[0].clean is None


def test_a_lesion_cache_scores_inside_the_foreground_both_scans_share(
    study: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from segrenorm.evaluate.metrics import mae

    data = study.data
    monkeypatch.setattr(type(data), "class_names", property(lambda self: ("background", "lesion")))
    src, tgt = data.paired_rows()
    result = paired_scores(data, {"none": data.source.images})
    assert result is not None and result["mask"] == "foreground of both scans"
    shared = data.source.masks[src] & data.target.masks[tgt]
    subjects = data.target.subjects[tgt]
    want = np.mean(
        [
            mae(
                data.source.images[src][subjects == s],
                data.target.images[tgt][subjects == s],
                mask=shared[subjects == s],
            )
            for s in dict.fromkeys(subjects.tolist())
        ]
    )
    assert result["methods"]["none"]["mae"] == pytest.approx(want, rel=1e-9)
    monkeypatch.undo()
    tissue = paired_scores(data, {"none": data.source.images})
    assert tissue is not None and tissue["methods"]["none"]["mae"] != pytest.approx(want, rel=1e-9)
