"""The lesion lens on several pocket classes (retinal fluid), against hand computations.

A 4-class cache (background, IRF, SRF, PED) of one held-out subject on both vendors: one IRF
pocket, two SRF pockets, no PED. The FLAIR (one class) output is compared with the numbers the
single-class lens wrote before fluid (``lesion_lens_flair_before.json``, same input).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from segrenorm.errors import InputError
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.lesion_lens import LesionLens, lesion_results
from segrenorm.evaluate.lesions import lesion_class, lesion_contrast
from tests.evaluate.test_lesions import write_lesion_cache

SIDE = 16
FLUID = ["background", "IRF", "SRF", "PED"]
#: [-1, 1] intensities per site: retina, IRF, SRF. On [0, 1]: A 0.5, 0.2, 0.1; B 0.6, 0.2, 0.1.
LEVELS = {"A": (0.0, -0.6, -0.8), "B": (0.2, -0.6, -0.8)}
#: 0.5 x 0.5 x 2 mm voxels: 0.5 mm³ each.
SPACING = [0.5, 0.5, 2.0]


def fluid_labels() -> np.ndarray:
    """(5, SIDE, SIDE) labels of the held-out eye: one IRF, two SRF pockets, no PED."""
    labels = np.zeros((5, SIDE, SIDE), np.uint8)
    labels[1:3, 4:6, 3:5] = 1  # IRF: 8 voxels
    labels[1:3, 10:12, 3:5] = 2  # SRF: 8 voxels
    labels[3, 10, 12] = 2  # SRF: 1 voxel, apart
    return labels


def write_fluid_cache(root: Path, write_cache: Any) -> Path:
    """Two vendors of 16x16 B-scans: a retina band (rows 2..13) holding the fluid."""
    retina = np.zeros((SIDE, SIDE), bool)
    retina[2:14, :] = True
    sites, subjects = {}, []
    for site in ("A", "B"):
        first = 0
        plan = [(f"{site.lower()}0", "train"), ("t0", "test")]
        arrays: dict[str, list[np.ndarray]] = {"images": [], "labels": [], "masks": [],
                                               "slices": []}  # fmt: skip
        for k, (subject, split) in enumerate(plan):
            labels = fluid_labels()
            tissue, irf, srf = LEVELS[site]
            image = np.where(retina, tissue, -1.0) * np.ones(labels.shape)
            image[labels == 1], image[labels == 2] = irf, srf
            arrays["images"].append(image.astype(np.float32))
            arrays["labels"].append(labels)
            arrays["masks"].append(np.broadcast_to(retina, labels.shape).astype(np.uint8))
            arrays["slices"].append(np.stack([np.full(5, k), np.arange(5)], 1).astype(np.int32))
            subjects.append({
                "subject": subject, "site": site, "image": f"/x/{site}/{subject}.mhd",
                "label": None, "split": split, "fold": 0, "shape": [SIDE, SIDE, 5],
                "spacing": SPACING, "n_slices": 5, "first_row": first,
            })  # fmt: skip
            first += 5
        sites[site] = {k: np.concatenate(v) for k, v in arrays.items()}
    path = write_cache(root, sites, subjects, class_names=FLUID)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["modality"] = "oct"
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def fluid_data(tmp_path_factory: pytest.TempPathFactory, tiny_kit: SimpleNamespace) -> EvalData:
    return EvalData.from_cache(
        write_fluid_cache(tmp_path_factory.mktemp("fluid") / "cache", tiny_kit.write_cache)
    )


def test_the_fluid_lens_counts_each_class_on_its_own(fluid_data: EvalData) -> None:
    data = fluid_data
    rows = {int(z): int(r) for r, z in enumerate(data.source.index)}  # one held-out subject
    pred = data.source.labels.copy()
    pred[rows[3], 10, 12] = 3  # the 1-voxel SRF pocket predicted as PED
    bright = data.source.images.copy()
    bright[data.source.labels == 1] = 0.4  # IRF now brighter than the retina: inverted
    lens = LesionLens.for_data(data, {"none": data.source.images, "bright": bright})
    assert lens is not None and lens.classes == [1, 2, 3]
    lens.add_seed(0, {"target": data.target.labels, "none": pred, "bright": data.source.labels})
    out = lens.results()
    assert out["class_names"] == ["IRF", "SRF", "PED"] and out["modality"] == "oct"
    assert (out["connectivity"], out["shell"], out["volume_unit"]) == (26, 2, "mm³")
    irf, srf, ped = (out["classes"][n] for n in ("IRF", "SRF", "PED"))
    assert [c["n_lesions"]["source"] for c in (irf, srf, ped)] == [1, 2, 0]
    counts = {n: [c["detection"]["methods"]["none"][k]["mean"] for k in ("tp", "fn", "fp")]
              for n, c in out["classes"].items()}  # fmt: skip
    assert counts == {"IRF": [1, 0, 0], "SRF": [1, 1, 0], "PED": [0, 0, 1]}
    none_srf = srf["detection"]["methods"]["none"]
    assert none_srf["lesion_dice"]["mean"] == pytest.approx(0.5)  # (1 + 0) / 2 pockets
    # 0.5 mm³ voxels: SRF 9 voxels true, 8 predicted; PED none true, 1 predicted.
    assert none_srf["per_subject"]["t0"]["true_volume"] == pytest.approx(4.5)
    assert none_srf["volume_rel_error"]["mean"] == pytest.approx(-1 / 9)
    none_ped = ped["detection"]["methods"]["none"]
    assert none_ped["volume_abs_error"]["mean"] == pytest.approx(0.5)
    assert none_ped["lesion_dice"]["mean"] is None and none_ped["volume_rel_error"]["mean"] is None
    assert ped["detection"]["methods"]["bright"]["fp"]["mean"] == 0
    # Dark fluid: ratios below 1. A: IRF 0.2 / 0.5, SRF 0.1 / 0.5; B: 0.2 / 0.6, 0.1 / 0.6.
    assert irf["contrast"]["source"]["ratio_mean"] == pytest.approx(0.4)
    assert srf["contrast"]["source"]["ratio_mean"] == pytest.approx(0.2)
    assert srf["contrast"]["source"]["n_lesions"] == 2
    assert irf["contrast"]["target"]["ratio_mean"] == pytest.approx(1 / 3)
    assert irf["contrast"]["methods"]["none"]["ratio_gap"] == pytest.approx(0.4 - 1 / 3)
    assert irf["contrast"]["methods"]["bright"]["inversions"] == 1  # 0.7 over 0.5
    assert irf["contrast"]["methods"]["bright"]["ratio_mean"] == pytest.approx(1.4)
    assert srf["contrast"]["methods"]["bright"]["inversions"] == 0
    assert ped["contrast"]["source"]["ratio_mean"] is None
    assert ped["contrast"]["source"]["n_lesions"] == 0


def test_the_shell_leaves_out_the_other_pocket_classes() -> None:
    # A 1-voxel pocket (0.8) with 18 of its 26 neighbours another class's fluid (0.1).
    image = np.zeros((3, 3, 3))  # 0.5 on [0, 1]
    truth = np.zeros(image.shape, bool)
    truth[1, 1, 1] = True
    image[1, 1, 1] = 0.6
    others = np.zeros(image.shape, bool)
    others[[0, 2]] = True
    image[others] = -0.8
    foreground = np.ones(image.shape, bool)
    assert lesion_contrast(image, truth, foreground, shell=1)[1][0] == pytest.approx(0.1)
    kept = lesion_contrast(image, truth, foreground, shell=1, others=others)[1][0]
    assert kept == pytest.approx(0.5)  # the 8 tissue voxels only
    with pytest.raises(InputError, match=r"other pocket classes of shape \(2, 3, 3\)"):
        lesion_contrast(image, truth, foreground, others=others[:2])


def test_a_fluid_cache_has_a_lesion_class_for_the_other_lenses() -> None:
    assert lesion_class(FLUID) == 1
    assert lesion_class(["background", "ped"]) == 1
    assert lesion_class(["background", "lesions_old"]) is None


def test_the_lens_rejects_classes_outside_the_foreground(fluid_data: EvalData) -> None:
    for bad in ([0], [4], [], [1, 1]):
        with pytest.raises(InputError, match=r"must be distinct foreground classes of the cache"):
            LesionLens(fluid_data, {"none": fluid_data.source.images}, bad)


# ----------------------------------------------------------------------------- FLAIR unchanged
BEFORE = Path(__file__).with_name("lesion_lens_flair_before.json")


def _flair_results(data: EvalData) -> dict[str, Any]:
    """The input the single-class lens was run on to write ``lesion_lens_flair_before.json``."""

    def erase(value: float) -> np.ndarray:
        images = data.source.images.copy()
        images[data.source.labels == 1] = value
        return images

    slices = {"none": data.source.images, "inverted": erase(-0.4), "flat": erase(0.0)}
    lens = LesionLens.for_data(data, slices)
    assert lens is not None
    truth = data.source.labels
    blob, half = truth.copy(), truth.copy()
    blob[:, 0, 8] = 1
    half[:, :, :8] = 0
    lens.add_seed(0, {"target": data.target.labels, "none": truth, "inverted": 0 * truth,
                      "flat": half})  # fmt: skip
    lens.add_seed(1, {"target": data.target.labels, "none": blob, "inverted": 0 * truth,
                      "flat": blob})  # fmt: skip
    return lens.results()


def test_flair_figures_are_those_of_the_single_class_lens(
    tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    data = EvalData.from_cache(write_lesion_cache(tmp_path / "cache", tiny_kit.write_cache))
    new = json.loads(json.dumps(_flair_results(data)))  # as results.json holds it
    old = json.loads(BEFORE.read_text())
    entry = new["classes"]["lesion"]
    for key in ("class_index", "n_lesions", "detection", "contrast"):
        assert entry[key] == old[key], key
    assert old["detection"]["methods"]["flat"]["fp"]["per_seed"] == [0, 3]  # not trivial
    # An old results.json reads as the new shape, field for field.
    assert lesion_results(old) == new
    assert lesion_results(new) == new and lesion_results(None) == {}
    with pytest.raises(InputError, match=r"neither 'classes' nor 'detection'/'contrast'"):
        lesion_results({"n_subjects": {}})
