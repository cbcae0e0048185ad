"""Tests of segrenorm.data.autolabels: per-site labels, the gmm pseudo-labeller, provenance."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from segrenorm.cli import main
from segrenorm.data.autolabels import GMMLabeller, ReferenceSite, pseudo_label_name, to_image_grid
from segrenorm.data.labelplan import plan_auto_labels
from segrenorm.data.listing import SubjectRecord
from segrenorm.data.manifest import open_manifest, summarize
from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slicing import ScaledVolume, SliceRecipe
from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes.bias import NO_BIAS_CORRECTION
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.intensity import IntensityScaling
from segrenorm.volumes.readwrite import load_image, load_label, save_image, save_label
from segrenorm.volumes.spatial import pad_to_shape, slice_volume, to_canonical

SHAPE = (24, 24, 20)
AFFINE = np.diag([-1.5, -1.5, 2.0, 1.0])  # L, P, S: prepare reorients to RAS
MEANS = (-0.5, 0.1, 0.7)  # dark, mid, bright tissue of the slab phantom
SIGMA = 0.15
NO_SCALING = IntensityScaling(low=-1.0, high=1.0, lower_pct=0.0, upper_pct=100.0)


def _dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    return float(2 * ((a == k) & (b == k)).sum() / ((a == k).sum() + (b == k).sum()))


def _slabs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three equal slabs along x (classes 1, 2, 3 = dark, mid, bright) with Gaussian noise."""
    truth = np.repeat(np.arange(1, 4), 10)[:, None, None] * np.ones((30, 24, 24), np.uint8)
    noise = np.random.default_rng(seed).normal(0.0, SIGMA, truth.shape)
    return (np.asarray(MEANS)[truth - 1] + noise).astype(np.float32), truth.astype(np.uint8)


def _isolated(labels: np.ndarray) -> int:
    """Voxels whose label differs from all 6 face neighbours (edges excluded)."""
    core = labels[1:-1, 1:-1, 1:-1]
    same = np.zeros(core.shape, bool)
    for axis in range(3):
        for shift in (-1, 1):
            same |= np.roll(labels, shift, axis=axis)[1:-1, 1:-1, 1:-1] == core
    return int((~same).sum())


def test_gmm_matches_the_bayes_error_and_smoothing_removes_isolated_voxels() -> None:
    data, truth = _slabs()
    volume = ScaledVolume(data, np.ones(truth.shape, bool), NO_SCALING)
    raw_labeller, smooth_labeller = GMMLabeller(sigma=0.0), GMMLabeller(sigma=1.0)
    raw_labeller.fit(None)
    smooth_labeller.fit(None)
    raw = raw_labeller.label(volume, SliceRecipe())
    smooth = smooth_labeller.label(volume, SliceRecipe())
    # By hand: equal priors and variances put the decision thresholds midway between the means,
    # 0.3 = 2 sigma away, so a voxel crosses one with p = Phi(-2) = 0.02275. The end classes
    # lose p and gain p (Dice 1 - p); the middle one loses 2p and gains 2p (Dice 1 - 2p).
    p = 0.5 * math.erfc(2.0 / math.sqrt(2.0))
    expected = (1 - p, 1 - 2 * p, 1 - p)
    for k, want in zip((1, 2, 3), expected, strict=True):
        assert abs(_dice(raw, truth, k) - want) < 0.01, (k, _dice(raw, truth, k), want)
        assert _dice(smooth, truth, k) > want + 0.01  # smoothing beats the voxelwise optimum
    assert _isolated(raw) > 200  # ~900 voxels cross a threshold, most of them alone
    assert _isolated(smooth) < _isolated(raw) / 20
    assert smooth_labeller.settings()["sigma_mm"] == 1.0


def test_gmm_labels_only_the_mask_and_smooths_in_mm() -> None:
    data, truth = _slabs(1)
    mask = np.ones(truth.shape, bool)
    mask[:, :, :4] = False
    data[~mask] = -1.0
    labeller = GMMLabeller()
    labeller.fit(None)
    labels = labeller.label(ScaledVolume(data, mask, NO_SCALING), SliceRecipe(spacing=(1, 1, 1)))
    assert labels.dtype == np.uint8 and not labels[~mask].any()
    assert _dice(labels[mask], truth[mask], 2) > 0.95
    with pytest.raises(ConfigError, match=r"gmm sigma -1 must be a number >= 0 \(mm\)"):
        GMMLabeller(sigma=-1)
    with pytest.raises(ConfigError, match=r"prepared without one \(--no-mask\)"):
        labeller.label(ScaledVolume(data, None, NO_SCALING), SliceRecipe())


def _reference(class_of_tissue: tuple[int, int, int], n_classes: int = 4) -> ReferenceSite:
    """A labelled site whose class ``class_of_tissue[t]`` holds tissue t (dark, mid, bright)."""
    data, tissue = _slabs(2)
    labels = np.asarray(class_of_tissue, np.uint8)[tissue - 1]
    return ReferenceSite(
        "siteB", "B", (data,), (labels,), (np.ones(data.shape, np.uint8),), n_classes
    )


def test_gmm_classes_follow_the_labelled_sites_intensity_order() -> None:
    # The reference calls the bright tissue 1, the dark one 2 and the mid one 3.
    labeller = GMMLabeller()
    labeller.fit(_reference((2, 3, 1)))
    assert labeller.class_of_rank == (2, 3, 1)
    data, tissue = _slabs(3)
    labels = labeller.label(
        ScaledVolume(data, np.ones(data.shape, bool), NO_SCALING), SliceRecipe()
    )
    expected = np.asarray((2, 3, 1), np.uint8)[tissue - 1]
    assert (labels == expected).mean() > 0.98
    with pytest.raises(
        ConfigError, match=r"has 3 classes \(background \+ 2\): use --auto-labels segnet"
    ):
        labeller.fit(_reference((1, 2, 2), n_classes=3))
    with pytest.raises(InputError, match="class 3 never occurs in the training slices of the"):
        labeller.fit(_reference((1, 2, 2)))


# --------------------------------------------------------------------------- through prepare


def _ball_subject(
    folder: Path, name: str, intensities: tuple[float, float, float], seed: int
) -> tuple[Path, Path]:
    """Three nested shells (labels 1 outer, 2 middle, 3 core) of the given intensities."""
    grid = np.indices(SHAPE).astype(np.float64)
    radius = np.sqrt(((grid - np.array([11.5, 11.5, 9.5])[:, None, None, None]) ** 2).sum(axis=0))
    labels = ((radius <= 9.5).astype(np.uint8) + (radius <= 7.5) + (radius <= 5.5)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    data = np.abs(rng.normal(0.0, 5.0, SHAPE))
    for k, value in enumerate(intensities, start=1):
        data[labels == k] = rng.normal(value, 0.03 * value, int((labels == k).sum()))
    geometry = Geometry.from_affine(AFFINE, SHAPE)
    folder.mkdir(parents=True, exist_ok=True)
    image = save_image(data, folder / f"{name}_T1w.nii.gz", geometry=geometry)
    label = save_label(labels, folder / f"{name}_dseg.nii.gz", geometry=geometry)
    return image, label


def _study(
    tmp_path: Path, *, a: tuple[float, float, float], b: tuple[float, float, float], n: int = 3
) -> list[SubjectRecord]:
    """Site A without labels (true ones kept next to the images), site B labelled."""
    records = []
    for site, intensities in (("siteA", a), ("siteB", b)):
        for k in range(n):
            image, label = _ball_subject(tmp_path / site, f"sub-{site}{k}", intensities, k)
            records.append(
                SubjectRecord(f"{site}-{k}", site, image, None if site == "siteA" else label)
            )
    return records


def _prepare(records: list[SubjectRecord], out: Path, **kwargs: Any) -> Path:
    options: dict[str, Any] = {
        "bias_correction": NO_BIAS_CORRECTION,
        "progress": False,
        "val_fraction": 0.0,
    }
    return prepare_cache(records, out, **{**options, **kwargs})


def test_gmm_route_writes_pseudo_labels_with_provenance(tmp_path: Path) -> None:
    # Site B's classes are ordered bright (1), dark (2), mid (3); site A has the same anatomy.
    records = _study(tmp_path, a=(900.0, 300.0, 600.0), b=(2000.0, 700.0, 1400.0))
    out = _prepare(records, tmp_path / "cache", auto_labels="gmm")
    manifest = open_manifest(out)
    assert manifest["has_labels"] is True and manifest["n_classes"] == 4
    auto = manifest["auto_labels"]
    assert auto["method"] == "gmm" and auto["reference_site"] == "B" and auto["sites"] == ["A"]
    assert auto["class_of_rank"] == [2, 3, 1]
    for subject in manifest["subjects"]:
        if subject["site"] == "B":
            assert subject["label_source"] == "file" and subject["label"].endswith("_dseg.nii.gz")
            continue
        assert subject["label_source"] == "gmm"
        assert subject["label"] == pseudo_label_name("A", subject["subject"])
        image = load_image(subject["image"])
        pseudo = load_label(out / subject["label"], like=image)  # on the image's own grid
        truth = load_label(Path(subject["image"]).with_name(
            Path(subject["image"]).name.replace("_T1w", "_dseg")
        ))  # fmt: skip
        dice = [_dice(pseudo.data, truth.data, k) for k in (1, 2, 3)]
        assert min(dice) > 0.9, dice
        # The cached rows are the pseudo-label map's kept slices on the RAS grid.
        rows = slice(subject["first_row"], subject["first_row"] + subject["n_slices"])
        keep = np.load(out / "A" / "slices.npy")[rows, 1]
        cached = np.load(out / "A" / "labels.npy")[rows]
        canonical = slice_volume(to_canonical(pseudo).data, "axial")[keep]
        assert np.array_equal(cached, pad_to_shape(canonical, cached.shape[1:], 0)[0])
    text = summarize(manifest, "c")
    assert "  A (siteA): " in text and "pseudo-labels (gmm; pseudo_labels/A/)" in text
    assert "pseudo" not in text.splitlines()[2]  # site B's line
    # evaluate records which held-out site carries pseudo-labels (the report says so)
    from segrenorm.evaluate.data import EvalData
    from segrenorm.evaluate.suite import _pseudo_labels

    assert _pseudo_labels(EvalData.from_cache(out)) == {"source": "gmm"}
    assert _pseudo_labels(EvalData.from_cache(out, direction="BA")) == {"target": "gmm"}


def test_gmm_without_a_labelled_site_names_classes_dark_mid_bright(tmp_path: Path) -> None:
    records = [
        dataclasses.replace(r, label=None)
        for r in _study(tmp_path, a=(300.0, 600.0, 900.0), b=(700.0, 1400.0, 2000.0), n=2)
    ]
    out = _prepare(records, tmp_path / "c1", auto_labels="gmm", test_fraction=0, val_fraction=0)
    manifest = open_manifest(out)
    assert manifest["class_names"] == ["background", "dark", "mid", "bright"]
    assert manifest["auto_labels"]["reference_site"] is None
    assert manifest["auto_labels"]["sites"] == ["A", "B"]
    assert {s["label_source"] for s in manifest["subjects"]} == {"gmm"}
    names = ["background", "csf", "gm", "wm"]
    out = _prepare(records, tmp_path / "c2", auto_labels="gmm", class_names=names, test_fraction=0)
    assert open_manifest(out)["class_names"] == names


def test_no_labels_and_no_auto_labels_is_the_label_free_cache(tmp_path: Path) -> None:
    records = [
        dataclasses.replace(r, label=None)
        for r in _study(tmp_path, a=(300.0, 600.0, 900.0), b=(700.0, 1400.0, 2000.0), n=2)
    ]
    manifest = open_manifest(_prepare(records, tmp_path / "c", test_fraction=0))
    assert manifest["has_labels"] is False and manifest["auto_labels"] is None
    assert {s["label_source"] for s in manifest["subjects"]} == {None}
    assert {s["label"] for s in manifest["subjects"]} == {None}
    assert not (tmp_path / "c" / "pseudo_labels").exists()


def _left_behind(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith((".c", "c")))


def test_every_refusal_names_the_site_and_what_to_do(tmp_path: Path) -> None:
    records = _study(tmp_path, a=(300.0, 600.0, 900.0), b=(700.0, 1400.0, 2000.0))
    partial = [*records[:3], records[3], dataclasses.replace(records[4], label=None), records[5]]
    with pytest.raises(
        InputError,
        match=r"site 'siteB' has label maps for some subjects only: subject 'siteB-1' \(",
    ):
        _prepare(partial, tmp_path / "c")
    with pytest.raises(
        InputError,
        match=r"site\(s\) 'siteA' have no label maps while 'siteB' do: pass --auto-labels "
        r"gmm\|segnet",
    ):
        _prepare(records, tmp_path / "c")
    with pytest.raises(
        ConfigError, match=r"needs the segmentation network of segrenorm\.workflows\.autolabel"
    ):
        _prepare(records, tmp_path / "c", auto_labels="segnet")
    with pytest.raises(ConfigError, match="unknown auto_labels 'fast': choose gmm, segnet"):
        _prepare(records, tmp_path / "c", auto_labels="fast")
    with pytest.raises(
        ConfigError,
        match=r"3 classes are asked for \(--n-classes/--class-names\): use --auto-labels segnet",
    ):
        _prepare(records, tmp_path / "c", auto_labels="gmm", n_classes=3)
    with pytest.raises(ConfigError, match="inside the foreground mask: drop --no-mask"):
        _prepare(records, tmp_path / "c", auto_labels="gmm", use_mask=False)
    two_classes = [
        dataclasses.replace(r, label=tmp_path / "two.nii.gz") if r.label else r for r in records
    ]
    labels = np.minimum(load_label(records[3].label).data, 1)  # type: ignore[arg-type]
    save_label(labels, tmp_path / "two.nii.gz", geometry=load_image(records[3].image).geometry)
    with pytest.raises(
        ConfigError, match=r"'siteB' has 2 classes \(background \+ 1\): use --auto-labels segnet"
    ):
        _prepare(two_classes, tmp_path / "c", auto_labels="gmm")  # refused after B's slicing
    assert _left_behind(tmp_path) == []


def test_segnet_needs_a_labelled_site(tmp_path: Path) -> None:
    class NeedsReference:
        method, needs_reference = "segnet", True

    site_records = [SubjectRecord("s", "x", tmp_path / "a.nii.gz", None)]
    with pytest.raises(ConfigError, match="learns from a labelled site, and no site has label"):
        plan_auto_labels(
            ["x"], [site_records], NeedsReference(),  # type: ignore[arg-type]
            n_classes=None, class_names=None, use_mask=True,
        )  # fmt: skip


def test_a_failing_labeller_leaves_no_cache(tmp_path: Path) -> None:
    class Broken(GMMLabeller):
        def label(self, volume: ScaledVolume, recipe: SliceRecipe) -> np.ndarray:
            raise RuntimeError("labeller crashed")

    class Wrong(GMMLabeller):
        def label(self, volume: ScaledVolume, recipe: SliceRecipe) -> np.ndarray:
            return np.full(volume.scaled.shape, 7, np.uint8)

    records = _study(tmp_path, a=(300.0, 600.0, 900.0), b=(700.0, 1400.0, 2000.0))
    with pytest.raises(RuntimeError, match="labeller crashed"):
        _prepare(records, tmp_path / "c", auto_labels=Broken())
    with pytest.raises(InputError, match="the gmm pseudo-labeller returned uint8 labels of shape"):
        _prepare(records, tmp_path / "c", auto_labels=Wrong(), n_classes=4)
    assert _left_behind(tmp_path) == []


def test_to_image_grid_takes_the_nearest_grid_voxel_of_each_image_voxel() -> None:
    image = Geometry.from_affine(np.diag([-1.0, 1.0, 1.0, 1.0]), (6, 4, 4))
    grid_affine = np.diag([2.0, 2.0, 2.0, 1.0])
    grid_affine[:3, 3] = (-5.5, 0.5, 0.5)
    grid = Geometry.from_affine(grid_affine, (3, 2, 2))
    labels = np.arange(12, dtype=np.uint8).reshape(3, 2, 2)
    moved = to_image_grid(labels, grid, image)
    # By hand: image voxel (i, j, k) lies at world (-i, j, k); grid index = (world - origin) / 2.
    for i, j, k in np.ndindex(6, 4, 4):
        g = np.rint((np.array([-i, j, k]) - grid_affine[:3, 3]) / 2.0 + 1e-9).astype(int)
        g = np.clip(g, 0, np.array(labels.shape) - 1)
        assert moved[i, j, k] == labels[tuple(g)]


def test_cli_auto_labels_and_its_refusal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    records = _study(tmp_path, a=(300.0, 600.0, 900.0), b=(700.0, 1400.0, 2000.0))
    listing = tmp_path / "subjects.csv"
    with listing.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["subject", "site", "image", "label"])
        for r in records:
            writer.writerow([r.subject, r.site, r.image, r.label or ""])
    base = [
        "prepare",
        "--csv",
        str(listing),
        "--quiet",
        "--bias-correction",
        "none",
        "--val-fraction",
        "0",
    ]
    assert main([*base, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "site(s) 'siteA' have no label maps while 'siteB' do" in err
    assert _left_behind(tmp_path) == []
    assert main([*base, "--out", str(tmp_path / "c"), "--auto-labels", "gmm"]) == 0
    assert "pseudo-labels (gmm; pseudo_labels/A/)" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert [s["label_source"] for s in manifest["subjects"]] == ["gmm"] * 3 + ["file"] * 3
