"""Overlap metrics: hand-computed cases, MONAI cross-checks, and bad inputs."""

from __future__ import annotations

import importlib
import json
import math

import numpy as np
import pytest

from segrenorm.errors import InputError
from segrenorm.evaluate.overlap import (
    confusion_counts,
    dice_from_counts,
    dice_per_class,
    generalized_dice,
    generalized_dice_from_counts,
    iou_per_class,
    overlap_scores,
)

# truth: class 0 x3, class 1 x2, class 2 x3; pred moves one 1 -> 2 and one 2 -> 0.
TRUTH = np.array([[0, 0, 0, 1], [1, 2, 2, 2]])
PRED = np.array([[0, 0, 0, 1], [2, 2, 2, 0]])


def test_confusion_counts_by_hand() -> None:
    counts = confusion_counts(PRED, TRUTH, 4)
    # class 0: tp 3, fp 1 (the 2 -> 0), fn 0; class 1: tp 1, fp 0, fn 1;
    # class 2: tp 2, fp 1, fn 1; class 3: absent.
    assert counts.tolist() == [[3, 1, 0], [1, 0, 1], [2, 1, 1], [0, 0, 0]]
    assert counts.dtype == np.int64


def test_dice_and_iou_by_hand() -> None:
    dice = dice_per_class(PRED, TRUTH, 4)
    np.testing.assert_allclose(dice[:3], [6 / 7, 2 / 3, 4 / 6])
    assert math.isnan(dice[3])  # absent from both maps
    iou = iou_per_class(PRED, TRUTH, 4, empty=1.0)
    np.testing.assert_allclose(iou, [3 / 4, 1 / 2, 2 / 4, 1.0])


def test_predicted_class_absent_from_truth_scores_zero() -> None:
    truth = np.zeros((3, 3), np.uint8)
    pred = truth.copy()
    pred[0, 0] = 1
    assert dice_per_class(pred, truth, 2).tolist() == [pytest.approx(16 / 17), 0.0]
    assert iou_per_class(pred, truth, 2)[1] == 0.0


def test_generalized_dice_by_hand() -> None:
    # Foreground classes 1 (2 voxels, w = 1/4) and 2 (3 voxels, w = 1/9); 3 absent, pred none.
    w1, w2 = 1 / 4, 1 / 9
    w3 = max(w1, w2)  # absent from truth: the largest present weight (MONAI), fp = fn = 0
    expected = 2 * (w1 * 1 + w2 * 2) / (w1 * 3 + w2 * 6 + w3 * 0)
    assert generalized_dice(PRED, TRUTH, 4) == pytest.approx(expected)
    w0 = 1 / 9
    with_bg = 2 * (w0 * 3 + w1 + w2 * 2) / (w0 * 7 + w1 * 3 + w2 * 6)
    assert generalized_dice(PRED, TRUTH, 4, include_background=True) == pytest.approx(with_bg)


def test_generalized_dice_penalises_classes_missing_from_truth() -> None:
    truth = np.array([0, 1, 1, 1, 1, 0, 0, 0])
    pred = np.array([2, 1, 1, 1, 1, 0, 0, 0])
    # class 2 takes class 1's weight 1/16, so its false positive counts.
    expected = 2 * 4 / 16 / (8 / 16 + 1 / 16)
    assert generalized_dice(pred, truth, 3) == pytest.approx(expected)
    assert generalized_dice(truth, truth, 3) == 1.0


def test_generalized_dice_without_foreground_is_nan() -> None:
    empty = np.zeros((4, 4), np.int64)
    assert math.isnan(generalized_dice(empty, empty, 3))
    assert generalized_dice(empty, empty, 3, include_background=True) == 1.0


def test_counts_of_slices_add_up_to_the_volume() -> None:
    rng = np.random.default_rng(3)
    truth, pred = rng.integers(0, 3, (2, 5, 6, 7))
    volume = confusion_counts(pred, truth, 3)
    summed = sum(confusion_counts(p, t, 3) for p, t in zip(pred, truth, strict=True))
    np.testing.assert_array_equal(volume, summed)
    np.testing.assert_allclose(dice_from_counts(volume), dice_per_class(pred, truth, 3))
    assert generalized_dice_from_counts(volume) == generalized_dice(pred, truth, 3)


def test_overlap_scores_are_plain_json() -> None:
    scores = overlap_scores(PRED, TRUTH, 4)
    assert scores["dice"][3] is None and scores["iou"][3] is None
    assert all(type(v) is float for v in scores["dice"][:3] + scores["iou"][:3])
    assert type(scores["generalized_dice"]) is float
    assert json.loads(json.dumps(scores, allow_nan=False)) == scores


@pytest.mark.parametrize(
    ("pred", "truth", "n_classes", "match"),
    [
        (np.zeros((2, 3), int), np.zeros((3, 2), int), 2, r"shape \(2, 3\) but truth has"),
        (np.zeros(4, int), np.array([0, 1, 2, 1]), 2, "truth holds label 2, outside"),
        (np.array([0, -1]), np.zeros(2, int), 2, "pred holds label -1"),
        (np.zeros(4, int), np.zeros(4, int), 1, "n_classes=1 must be >= 2"),
        (np.zeros(4, int), np.zeros(4, int), 2.0, "n_classes must be an integer"),
        (np.zeros(4), np.zeros(4, int), 2, "pred has dtype float64"),
    ],
)
def test_bad_inputs_raise(pred: np.ndarray, truth: np.ndarray, n_classes: int, match: str) -> None:
    with pytest.raises(InputError, match=match):
        overlap_scores(pred, truth, n_classes)


# ------------------------------------------------------------------------- MONAI cross-checks


def _onehot(labels: np.ndarray, n_classes: int) -> object:
    import torch

    t = torch.from_numpy(labels.astype(np.int64))
    return torch.nn.functional.one_hot(t, n_classes).movedim(-1, 0)[None].float()  # (1, C, ...)


def _random_maps(seed: int, shape: tuple[int, ...], n_classes: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    truth = rng.choice(n_classes, size=shape, p=np.linspace(3, 1, n_classes) / sum(
        np.linspace(3, 1, n_classes)))  # fmt: skip
    pred = np.where(rng.random(shape) < 0.7, truth, rng.integers(0, n_classes, shape))
    return pred.astype(np.uint8), truth.astype(np.uint8)


CASES = [(0, (12, 10, 8), 4), (1, (9, 11, 7), 3), (2, (32, 24), 4), (3, (17, 20), 5)]


@pytest.mark.parametrize(("seed", "shape", "n_classes"), CASES)
def test_dice_and_iou_match_monai(seed: int, shape: tuple[int, ...], n_classes: int) -> None:
    metrics = importlib.import_module("monai.metrics")  # a runtime dependency: never skipped
    pred, truth = _random_maps(seed, shape, n_classes)
    dice = metrics.DiceMetric(include_background=True, reduction="none")
    monai_dice = dice(_onehot(pred, n_classes), _onehot(truth, n_classes))[0].numpy()
    np.testing.assert_allclose(dice_per_class(pred, truth, n_classes), monai_dice, rtol=1e-5)
    iou = metrics.MeanIoU(include_background=True, reduction="none")
    monai_iou = iou(_onehot(pred, n_classes), _onehot(truth, n_classes))[0].numpy()
    np.testing.assert_allclose(iou_per_class(pred, truth, n_classes), monai_iou, rtol=1e-5)


@pytest.mark.parametrize(("seed", "shape", "n_classes"), CASES)
@pytest.mark.parametrize("include_background", [False, True])
def test_generalized_dice_matches_monai(
    seed: int, shape: tuple[int, ...], n_classes: int, include_background: bool
) -> None:
    metrics = importlib.import_module("monai.metrics")  # a runtime dependency: never skipped
    pred, truth = _random_maps(seed, shape, n_classes)
    truth[truth == n_classes - 1] = 0  # one class absent from truth but still predicted
    metric = metrics.GeneralizedDiceScore(include_background=include_background)
    expected = float(metric(_onehot(pred, n_classes), _onehot(truth, n_classes)).squeeze())
    ours = generalized_dice(pred, truth, n_classes, include_background=include_background)
    assert ours == pytest.approx(expected, rel=1e-5)


def test_empty_classes_match_monai_ignore_empty_false() -> None:
    metrics = importlib.import_module("monai.metrics")  # a runtime dependency: never skipped
    truth = np.zeros((6, 6), np.uint8)
    truth[1:3, 1:3] = 1
    pred = truth.copy()
    pred[4, 4] = 2  # class 2: predicted only; class 3: absent from both
    dice = metrics.DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    expected = dice(_onehot(pred, 4), _onehot(truth, 4))[0].numpy()
    np.testing.assert_allclose(dice_per_class(pred, truth, 4, empty=1.0), expected, rtol=1e-6)
