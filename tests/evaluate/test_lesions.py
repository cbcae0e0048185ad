"""Lesion-wise fidelity: every definition against a hand computation on tiny volumes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from scipy import stats

from segrenorm.errors import InputError
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.lesion_lens import LesionLens
from segrenorm.evaluate.lesions import (
    contrast_ratios,
    count_inversions,
    detect_lesions,
    label_lesions,
    lesion_class,
    lesion_contrast,
    subject_volume,
    volume_agreement,
)
from segrenorm.evaluate.suite import MethodInput, run_evaluation

# ----------------------------------------------------------------------------- a lesion cache
SIDE = 16
#: Lesion intensity on the [-1, 1] scale per site: [0, 1] values 0.8 (A) and 0.9 (B) over a
#: normal-appearing background of 0.0 (0.5): contrast ratios 1.6 and 1.8.
BRIGHT = {"A": 0.6, "B": 0.8}
#: (subject, split, slice indices held); t1 lacks slice 2.
PLAN = [("a0", "train", "A", [0, 1, 2, 3]), ("b0", "train", "B", [0, 1, 2, 3]),
        ("t0", "test", "AB", [0, 1, 2, 3, 4]), ("t1", "test", "AB", [0, 1, 3, 4])]  # fmt: skip


def _lesions(subject: str) -> np.ndarray:
    """(5, SIDE, SIDE) lesion mask of a subject, the same on both scanners."""
    mask = np.zeros((5, SIDE, SIDE), bool)
    if subject == "t1":
        mask[1:4, 8:10, 4:6] = True  # slice 2 is not held: two lesions in the cache
    else:
        mask[1:3, 5:7, 5:7] = True  # 8 voxels
        mask[3, 10, 10] = True  # 1 voxel
    return mask


def write_lesion_cache(root: Path, write_cache: Any) -> Path:
    """Two sites of 16x16 slices: a bright-lesion disc; the test subjects on both sites."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    disc = np.hypot(yy - 7.5, xx - 7.5) < 7.0
    sites: dict[str, dict[str, list[np.ndarray]]] = {}
    subjects = []
    for site in ("A", "B"):
        rows = 0
        for subject, split, where, held in PLAN:
            if site not in where:
                continue
            lesion = _lesions(subject)[held]
            image = np.where(disc, 0.0, -1.0) + np.where(lesion, BRIGHT[site], 0.0)
            arrays = sites.setdefault(site, {"images": [], "labels": [], "masks": [], "slices": []})
            arrays["images"].append(image.astype(np.float32))
            arrays["labels"].append(lesion.astype(np.uint8))
            arrays["masks"].append(np.broadcast_to(disc, lesion.shape).astype(np.uint8))
            index = np.stack([np.full(len(held), len(subjects)), held], 1).astype(np.int32)
            arrays["slices"].append(index)
            subjects.append({
                "subject": subject, "site": site, "image": f"/x/{site}/{subject}.nii.gz",
                "label": None, "split": split, "fold": 0, "shape": [SIDE, SIDE, 5],
                "spacing": [2.0, 2.0, 2.0], "n_slices": len(held), "first_row": rows,
            })  # fmt: skip
            rows += len(held)
    joined = {s: {k: np.concatenate(v) for k, v in a.items()} for s, a in sites.items()}
    return write_cache(root, joined, subjects, class_names=["background", "lesion"])


@pytest.fixture(scope="module")
def lesion_data(tmp_path_factory: pytest.TempPathFactory, tiny_kit: SimpleNamespace) -> EvalData:
    root = tmp_path_factory.mktemp("lesion-cache") / "cache"
    return EvalData.from_cache(write_lesion_cache(root, tiny_kit.write_cache))


# ----------------------------------------------------------------------------- definitions
def test_the_lesion_class_is_the_one_named_lesion() -> None:
    assert lesion_class(["background", "lesion"]) == 1
    assert lesion_class(["background", "csf", "gm", "wm", "Lesion"]) == 4
    assert lesion_class(["background", "csf", "gm", "wm"]) is None
    assert lesion_class(["lesion", "wm"]) is None  # background is never the lesion class


def test_a_subject_volume_puts_rows_at_their_slice_and_leaves_missing_slices_empty() -> None:
    rows = np.arange(3)[:, None, None] * np.ones((3, 2, 2)) + 1  # rows 1, 2, 3
    volume = subject_volume(rows, np.array([7, 4, 5]), fill=0)
    assert volume.shape == (4, 2, 2)  # slices 4..7
    assert volume[:, 0, 0].tolist() == [2, 3, 0, 1]  # slice 6 missing
    with pytest.raises(InputError, match="with repeats: one subject's rows"):
        subject_volume(rows, np.array([4, 4, 5]))
    with pytest.raises(InputError, match=r"N slice indices, N >= 1; got rows \(3, 2, 2\)"):
        subject_volume(rows, np.array([4, 5]))


def test_lesions_are_26_connected_components_and_a_missing_slice_splits_them() -> None:
    mask = np.zeros((3, 4, 4), bool)
    mask[0, 0, 0] = mask[1, 1, 1] = True  # corner neighbours: one lesion
    mask[0, 3, 3] = True  # apart: a second one
    assert label_lesions(mask)[1] == 2
    rows = np.zeros((2, 4, 4), bool)
    rows[:, 1, 1] = True  # the same pixel on slices 3 and 5 (slice 4 not held)
    assert label_lesions(subject_volume(rows, np.array([3, 5]), fill=False))[1] == 2
    assert label_lesions(rows)[1] == 1  # naive stacking would join them
    with pytest.raises(InputError, match=r"\(Z, H, W\) volumes, got shape \(4, 4\)"):
        label_lesions(mask[0])


def _cubes() -> tuple[np.ndarray, np.ndarray]:
    truth = np.zeros((5, 12, 12), bool)
    truth[1:4, 1:4, 1:4] = True  # lesion 1: 27 voxels, found
    truth[1:4, 1:4, 8:11] = True  # lesion 2: 27 voxels, removed
    pred = np.zeros_like(truth)
    pred[1:4, 1:4, 1:4] = True
    pred[2, 9:11, 9:11] = True  # a hallucinated 4-voxel blob
    return pred, truth


def test_detection_counts_found_removed_and_hallucinated_lesions() -> None:
    pred, truth = _cubes()
    found = detect_lesions(pred, truth)
    assert (found.tp, found.fn, found.fp) == (1, 1, 1)
    assert found.lesion_dice == (1.0, 0.0)
    assert (found.true_voxels, found.pred_voxels) == (54, 31)


def test_a_lesion_is_detected_from_ten_percent_of_its_voxels() -> None:
    truth = np.zeros((1, 4, 40), bool)
    truth[0, 0, 0:20] = True  # 20 voxels: 2 needed
    truth[0, 2, 0:10] = True  # 10 voxels: 1 needed
    pred = np.zeros_like(truth)
    pred[0, 0, 0] = pred[0, 2, 0] = True  # 1 voxel each: 5% and 10%
    found = detect_lesions(pred, truth)
    assert (found.tp, found.fn, found.fp) == (1, 1, 0)  # a partial cover is never a false positive
    pred[0, 0, 1] = True  # 2 of 20 voxels: 10%
    assert detect_lesions(pred, truth).tp == 2
    assert detect_lesions(pred, truth, fraction=0.11).tp == 0  # 2/20 and 1/10 both short


def test_per_lesion_dice_counts_bleeding_within_the_margin_but_not_a_neighbour() -> None:
    truth = np.zeros((1, 3, 16), bool)
    truth[0, 1, 2:6] = True  # 4 voxels
    pred = truth.copy()
    pred[0, 1, 7] = True  # 2 voxels past it: inside the 2-voxel neighbourhood, its own blob
    pred[0, 1, 9] = True  # 4 voxels past it: outside
    found = detect_lesions(pred, truth)
    assert found.lesion_dice == (pytest.approx(2 * 4 / (4 + 5)),)
    assert found.fp == 2
    assert detect_lesions(pred, truth, margin=0).lesion_dice == (1.0,)
    # Two lesions one voxel apart, each predicted exactly: the neighbour's voxels are not
    # counted against either.
    twin = np.zeros((1, 3, 16), bool)
    twin[0, 1, 2:4] = twin[0, 1, 5:7] = True
    assert detect_lesions(twin, twin).lesion_dice == (1.0, 1.0)


def test_detection_rejects_bad_input() -> None:
    pred, truth = _cubes()
    with pytest.raises(InputError, match="differ in shape: compare one subject's volumes"):
        detect_lesions(pred[:2], truth)
    with pytest.raises(InputError, match=r"detection fraction 0.0 must lie in \(0, 1\]"):
        detect_lesions(pred, truth, fraction=0.0)
    with pytest.raises(InputError, match="Dice margin -1 must be >= 0 voxels"):
        detect_lesions(pred, truth, margin=-1)


def test_contrast_is_the_lesion_median_over_its_nawm_shell_median() -> None:
    image = np.zeros((3, 9, 9))  # normal-appearing: 0.5 on the [0, 1] scale
    truth = np.zeros(image.shape, bool)
    truth[1, 4, 4] = True
    image[1, 4, 4] = 0.6  # 0.8
    image[:, :, 6:] = 0.2  # 0.6, on the shell's right-hand column (x = 6)
    foreground = np.ones(image.shape, bool)
    foreground[:, 2, :] = False  # the bottom row of the shell is not brain
    image[:, 2, :] = 1.0
    truth[1, 6, 2] = True  # another lesion inside the shell: not NAWM
    image[1, 6, 2] = 1.0
    lesion, nawm = lesion_contrast(image, truth, foreground)
    # The shell of the first lesion: the 5x5x3 block around it, less the lesions and row 2:
    # 4 rows x 5 columns x 3 slices = 60 voxels, minus itself and the other lesion = 58, of
    # which the x = 6 column (4 x 3 = 12 voxels) is at 0.6 and the rest at 0.5: median 0.5.
    assert lesion[0] == pytest.approx(0.8)
    assert nawm[0] == pytest.approx(0.5)
    assert contrast_ratios(lesion, nawm)[0] == pytest.approx(1.6)
    alone = np.zeros(image.shape, bool)
    alone[1, 4, 4] = True
    nothing = np.zeros(image.shape, bool)
    nothing[1, 4, 4] = True
    assert np.isnan(lesion_contrast(image, alone, nothing)[1][0])  # no shell in the foreground
    with pytest.raises(InputError, match="of one shape, got"):
        lesion_contrast(image[:2], truth, foreground)
    with pytest.raises(InputError, match="at least 1 voxel thick, got 0"):
        lesion_contrast(image, truth, foreground, shell=0)


def test_contrast_ratios_and_inversions_by_hand() -> None:
    ratios = contrast_ratios(np.array([0.8, 0.5, 0.4]), np.array([0.5, np.nan, 0.0]))
    assert ratios[0] == pytest.approx(1.6) and np.isnan(ratios[1:]).all()
    before = (np.array([0.8, 0.8, 0.8, 0.5]), np.array([0.5, 0.5, np.nan, 0.5]))
    after = (np.array([0.4, 0.9, 0.2, 0.4]), np.array([0.5, 0.5, 0.5, 0.5]))
    # Lesion 0 flips (+0.3 -> -0.1); 1 keeps its sign; 2 has no NAWM; 3 starts at 0: no flip.
    assert count_inversions(before, after) == (1, 3)
    with pytest.raises(InputError, match="got 4 and 1 lesions"):
        count_inversions(before, (np.array([0.1]), np.array([0.2])))


def test_volume_agreement_by_hand() -> None:
    found = volume_agreement([10.0, 20.0, 0.0], [12.0, 10.0, 4.0])
    assert found["abs_error"] == pytest.approx(16 / 3)
    assert found["rel_error"] == pytest.approx((0.2 - 0.5) / 2)  # subjects with lesions
    assert found["abs_rel_error"] == pytest.approx(0.35)
    r = stats.pearsonr([10.0, 20.0, 0.0], [12.0, 10.0, 4.0])[0]
    assert found["correlation"] == pytest.approx(r)
    assert volume_agreement([5.0], [4.0])["correlation"] is None
    assert volume_agreement([0.0, 0.0], [1.0, 2.0])["rel_error"] is None
    with pytest.raises(InputError, match="one true and one predicted volume per subject, got 2"):
        volume_agreement([1.0, 2.0], [1.0])


# ----------------------------------------------------------------------------- the lens
def test_no_lens_without_a_lesion_class(tmp_path: Path, tiny_kit: SimpleNamespace) -> None:
    data = EvalData.from_cache(tiny_kit.cache(tmp_path / "t1"), split="train")
    assert LesionLens.for_data(data, {"none": data.source.images}) is None


def _erase(data: EvalData, value: float) -> np.ndarray:
    images = data.source.images.copy()
    images[data.source.labels == 1] = value
    return images


def test_the_lens_by_hand(lesion_data: EvalData) -> None:
    data = lesion_data
    slices = {"none": data.source.images, "inverted": _erase(data, -0.4),
              "flat": _erase(data, 0.0)}  # fmt: skip
    lens = LesionLens.for_data(data, slices)
    assert lens is not None
    truth = data.source.labels
    blob = truth.copy()
    blob[:, 0, 8] = 1  # a hallucinated column on every slice: one blob per subject (t1: two)
    lens.add_seed(0, {"target": data.target.labels, "none": truth, "inverted": 0 * truth,
                      "flat": truth})  # fmt: skip
    lens.add_seed(1, {"target": data.target.labels, "none": blob, "inverted": 0 * truth,
                      "flat": truth})  # fmt: skip
    shared = lens.results()
    assert shared["class_names"] == ["lesion"] and list(shared["classes"]) == ["lesion"]
    assert shared["volume_unit"] == "mm³" and shared["segmentor_seeds"] == [0, 1]
    out = shared["classes"]["lesion"]
    assert out["n_lesions"] == {"source": 4, "target": 4}  # t0: 2, t1: 2 (split by its gap)
    rows = out["detection"]["methods"]
    assert rows["none"]["tp"] == {"mean": 4.0, "seed_std": 0.0, "per_seed": [4, 4]}
    assert rows["none"]["fp"]["per_seed"] == [0, 3]  # t1's missing slice cuts its column
    assert rows["none"]["fp"]["seed_std"] == pytest.approx(np.std([0, 3], ddof=1))
    assert rows["inverted"]["fn"]["mean"] == 4.0 and rows["inverted"]["lesion_dice"]["mean"] == 0
    assert rows["inverted"]["volume_rel_error"]["mean"] == -1.0
    t0 = rows["none"]["per_subject"]["t0"]
    assert t0["true_volume"] == 9 * 8.0  # 9 voxels of 2 mm
    assert t0["pred_volume"] == pytest.approx((9 * 8.0 + (9 + 5) * 8.0) / 2)  # seed mean
    assert out["detection"]["target"]["tp"]["mean"] == 4.0
    contrast = out["contrast"]
    assert contrast["source"]["ratio_mean"] == pytest.approx(1.6)
    assert contrast["target"]["ratio_mean"] == pytest.approx(1.8)
    assert contrast["methods"]["none"]["ratio_gap"] == pytest.approx(-0.2)
    assert contrast["methods"]["none"]["inversions"] == 0
    assert contrast["methods"]["inverted"]["inversions"] == 4
    assert contrast["methods"]["inverted"]["ratio_mean"] == pytest.approx(0.3 / 0.5)
    assert contrast["methods"]["flat"]["inversions"] == 0  # erased, not inverted
    assert contrast["methods"]["flat"]["ratio_mean"] == pytest.approx(1.0)
    with pytest.raises(InputError, match=r"no target-segmentor labels of \['flat'\]"):
        lens.add_seed(2, {"target": truth, "none": truth, "inverted": truth})


def test_the_suite_runs_the_lens_on_its_own_segmentors_predictions(
    lesion_data: EvalData, eval_kit: SimpleNamespace
) -> None:
    data = lesion_data
    methods = {"none": MethodInput(data.source.images),
               "inverted": MethodInput(_erase(data, -0.4))}  # fmt: skip
    config = eval_kit.evaluation(segmentor_seeds=2)
    results, artifacts = run_evaluation(data, methods, config)
    assert results["lesions"]["segmentor_seeds"] == config.segmentor_seed_list
    lesions = results["lesions"]["classes"]["lesion"]
    # The first seed's figures are those of the label maps the report draws.
    for name in methods:
        pred = artifacts.target_predictions[name]
        counts = np.zeros(3, int)
        for positions in data.source.subject_rows().values():
            index = data.source.index[positions]
            volume = np.zeros((index.max() - index.min() + 1, SIDE, SIDE), bool)
            truth = volume.copy()
            volume[index - index.min()] = pred[positions] == 1
            truth[index - index.min()] = data.source.labels[positions] == 1
            found = detect_lesions(volume, truth)
            counts += (found.tp, found.fn, found.fp)
        row = lesions["detection"]["methods"][name]
        assert [row[k]["per_seed"][0] for k in ("tp", "fn", "fp")] == counts.tolist(), name
    assert lesions["contrast"]["methods"]["inverted"]["inversions"] == 4
