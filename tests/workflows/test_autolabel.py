"""Tests of segrenorm.workflows.autolabel: the segnet pseudo-labeller through prepare."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segrenorm.data.autolabels import GMMLabeller
from segrenorm.data.listing import SubjectRecord
from segrenorm.data.manifest import open_manifest
from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slicing import ScaledVolume, SliceRecipe
from segrenorm.errors import ConfigError
from segrenorm.evaluate.segmentors import SegmentorConfig
from segrenorm.volumes.bias import NO_BIAS_CORRECTION
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.intensity import IntensityScaling
from segrenorm.volumes.readwrite import load_image, load_label, save_image, save_label
from segrenorm.volumes.spatial import pad_to_shape, slice_volume, to_canonical
from segrenorm.workflows.autolabel import AUTOLABEL_SEGMENTOR, SegnetLabeller, auto_labeller

SHAPE = (24, 24, 20)
AFFINE = np.diag([-1.5, 1.5, 2.0, 1.0])  # L, A, S: prepare flips x to reach RAS
NO_SCALING = IntensityScaling(low=-1.0, high=1.0, lower_pct=0.0, upper_pct=100.0)
TINY = SegmentorConfig(ngf=4, depth=2, iterations=60, batch_size=4)


def _subject(folder: Path, name: str, scale: float, seed: int) -> tuple[Path, Path]:
    """Two nested shells (label 1 dark outer, 2 bright core) with noise, and their labels."""
    grid = np.indices(SHAPE).astype(np.float64)
    radius = np.sqrt(((grid - np.array([11.5, 11.5, 9.5])[:, None, None, None]) ** 2).sum(axis=0))
    labels = ((radius <= 9.5).astype(np.uint8) + (radius <= 5.5)).astype(np.uint8)
    rng = np.random.default_rng(seed)
    data = np.abs(rng.normal(0.0, 5.0, SHAPE)) + scale * np.array([0.0, 300.0, 700.0])[labels]
    data += rng.normal(0.0, 10.0 * scale, SHAPE) * (labels > 0)
    geometry = Geometry.from_affine(AFFINE, SHAPE)
    folder.mkdir(parents=True, exist_ok=True)
    image = save_image(data, folder / f"{name}_T1w.nii.gz", geometry=geometry)
    label = save_label(labels, folder / f"{name}_dseg.nii.gz", geometry=geometry)
    return image, label


def test_segnet_route_end_to_end(tmp_path: Path) -> None:
    records, truth = [], {}
    for site, scale in (("siteA", 1.0), ("siteB", 2.5)):
        for k in range(3):
            image, label = _subject(tmp_path / site, f"{site}-{k}", scale, k)
            truth[f"{site}-{k}"] = label
            records.append(SubjectRecord(f"{site}-{k}", site, image, label if scale > 1 else None))
    labeller = SegnetLabeller(config=TINY)
    out = prepare_cache(
        records, tmp_path / "cache", auto_labels=labeller, bias_correction=NO_BIAS_CORRECTION,
        val_fraction=0.0, progress=False,
    )  # fmt: skip
    manifest = open_manifest(out)
    auto = manifest["auto_labels"]
    assert auto["method"] == "segnet" and auto["reference_site"] == "B" and auto["sites"] == ["A"]
    assert auto["segmentor"]["iterations"] == 60 and auto["landmarks"] == 101
    assert manifest["n_classes"] == 3 and manifest["has_labels"] is True
    assert labeller.reference_site == "B"
    for subject in manifest["subjects"]:
        assert subject["label_source"] == ("segnet" if subject["site"] == "A" else "file")
        if subject["site"] != "A":
            continue
        assert subject["label"] == f"pseudo_labels/A/{subject['subject']}.nii.gz"
        image = load_image(subject["image"])
        pseudo = load_label(out / subject["label"], like=image)  # on the image's own grid
        accuracy = (pseudo.data == load_label(truth[subject["subject"]]).data).mean()
        assert accuracy > 0.95, (subject["subject"], accuracy)
        rows = slice(subject["first_row"], subject["first_row"] + subject["n_slices"])
        keep = np.load(out / "A" / "slices.npy")[rows, 1]
        cached = np.load(out / "A" / "labels.npy")[rows]
        canonical = slice_volume(to_canonical(pseudo).data, "axial")[keep]
        assert np.array_equal(cached, pad_to_shape(canonical, cached.shape[1:], 0)[0])


def test_auto_labeller_resolves_the_cli_choices() -> None:
    assert auto_labeller(None) is None
    assert isinstance(auto_labeller("gmm", seed=3), GMMLabeller)
    segnet = auto_labeller("segnet", seed=4)
    assert isinstance(segnet, SegnetLabeller) and segnet.config.seed == 4
    assert segnet.config.iterations == AUTOLABEL_SEGMENTOR.iterations
    with pytest.raises(ConfigError, match="unknown --auto-labels 'fast': choose gmm, segnet"):
        auto_labeller("fast")


def test_segnet_refuses_without_a_reference_and_before_fit() -> None:
    labeller = SegnetLabeller(config=TINY)
    with pytest.raises(ConfigError, match="segnet learns from a labelled site, and no site has"):
        labeller.fit(None)
    with pytest.raises(RuntimeError, match=r"SegnetLabeller\.label called before fit"):
        labeller.label(ScaledVolume(np.zeros(SHAPE, np.float32), None, NO_SCALING), SliceRecipe())


def test_segnet_without_labelled_site_is_refused_by_prepare(tmp_path: Path) -> None:
    records = [
        SubjectRecord(f"{s}-0", s, _subject(tmp_path / s, f"{s}-0", 1.0, 0)[0], None)
        for s in ("siteA", "siteB")
    ]
    with pytest.raises(ConfigError, match="no site has label maps: give one site's labels, or"):
        prepare_cache(records, tmp_path / "c", auto_labels=auto_labeller("segnet"), progress=False)
    assert not any(p.name.startswith((".c", "c")) for p in tmp_path.iterdir())
