"""Post-hoc segmentors: training on tiny synthetic slices, determinism, subject scores."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.overlap import dice_per_class, subject_scores
from segrenorm.evaluate.segmentors import (
    SegmentorConfig,
    predict_labels,
    soft_dice_loss,
    train_segmentor,
)

# ~1 s of one CPU thread; 70 steps pass the Dice thresholds below for every seed tried (0-5).
TINY = SegmentorConfig(ngf=8, depth=2, iterations=70, batch_size=4, lr=3e-3, seed=0)


def _phantoms(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Discs (class 3) inside rings (class 2) inside a thin shell (class 1), plus noise.

    Class intensities overlap under the noise, so the net has to use shape as well.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    labels = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        cy, cx = rng.uniform(size * 0.35, size * 0.65, 2)
        radius = np.hypot(yy - cy, xx - cx)
        outer = rng.uniform(size * 0.28, size * 0.34)
        labels[i][radius < outer] = 1
        labels[i][radius < outer - 2.5] = 2
        labels[i][radius < outer * rng.uniform(0.4, 0.55)] = 3
    levels = np.array([-1.0, -0.4, 0.1, 0.6], np.float32)
    images = levels[labels] + rng.normal(0, 0.2, labels.shape).astype(np.float32)
    return np.clip(images, -1, 1).astype(np.float32), labels


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, ...]:
    x_train, y_train = _phantoms(24, seed=0)
    x_test, y_test = _phantoms(8, seed=1)
    return x_train, y_train, x_test, y_test


@pytest.fixture(scope="module")
def trained(data: tuple[np.ndarray, ...]) -> torch.nn.Module:
    x_train, y_train = data[0], data[1]
    return train_segmentor(x_train, y_train, 4, TINY)


def test_training_beats_chance_by_far(
    data: tuple[np.ndarray, ...], trained: torch.nn.Module
) -> None:
    x_test, y_test = data[2], data[3]
    untrained = train_segmentor(data[0], data[1], 4, SegmentorConfig(
        ngf=4, depth=2, iterations=1, batch_size=4, lr=1e-9))  # fmt: skip
    before = dice_per_class(predict_labels(untrained, x_test), y_test, 4, empty=0.0)
    pred = predict_labels(trained, x_test)
    assert pred.dtype == np.uint8 and pred.shape == y_test.shape
    dice = dice_per_class(pred, y_test, 4)
    assert not trained.training
    assert dice[0] > 0.95 and (dice[1:] > 0.75).all(), dice
    assert dice[1:].mean() > before[1:].mean() + 0.3, (dice, before)


def test_same_seed_same_net_other_seed_other_net(data: tuple[np.ndarray, ...]) -> None:
    config = SegmentorConfig(ngf=4, depth=2, iterations=3, batch_size=4, crop_size=16)
    state = torch.get_rng_state()
    a = train_segmentor(data[0], data[1], 4, config)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left alone
    b = train_segmentor(data[0], data[1], 4, config)
    c = train_segmentor(data[0], data[1], 4, SegmentorConfig(**{**vars(config), "seed": 1}))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    pairs = zip(a.parameters(), c.parameters(), strict=True)
    assert any(not torch.equal(pa, pc) for pa, pc in pairs)


def test_progress_reports_every_step(data: tuple[np.ndarray, ...]) -> None:
    seen: list[tuple[int, float]] = []
    config = SegmentorConfig(ngf=4, depth=2, iterations=3, batch_size=2, dice_weight=1.0)
    train_segmentor(data[0][:4], data[1][:4], 4, config, progress=lambda *a: seen.append(a))
    assert [step for step, _ in seen] == [1, 2, 3]
    assert all(np.isfinite(loss) and loss > 0 for _, loss in seen)


def test_predict_restores_training_mode(trained: torch.nn.Module) -> None:
    trained.train()
    try:
        predict_labels(trained, np.zeros((3, 32, 32), np.float32), batch_size=2)
        assert trained.training
    finally:
        trained.eval()


def test_soft_dice_loss_is_zero_for_perfect_logits() -> None:
    target = torch.tensor([[[0, 1], [2, 2]]])
    logits = 50.0 * torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float()
    assert float(soft_dice_loss(logits, target)) == pytest.approx(0.0, abs=1e-6)
    wrong = torch.roll(logits, 1, dims=1)  # every pixel confidently in another class
    assert float(soft_dice_loss(wrong, target)) > 0.5


def test_subject_scores_by_hand() -> None:
    truth = np.zeros((3, 2, 2), np.uint8)
    truth[0, 0, 0] = truth[1, 0, 0] = 1  # subject "a": two slices, one voxel of class 1 each
    truth[2, :, 0] = 1  # subject "b": one slice, two voxels of class 1
    pred = truth.copy()
    pred[1, 0, 0] = 0  # a: class 1 tp 1, fn 1 -> dice 2/3, iou 1/2
    pred[2, 1, 1] = 1  # b: class 1 tp 2, fp 1 -> dice 4/5, iou 2/3
    scores = subject_scores(pred, truth, ["a", "a", 7], 3, class_names=["bg", "x", "y"])
    assert scores["n_subjects"] == 2 and scores["subjects"] == ["a", "7"]
    assert scores["class_names"] == ["bg", "x", "y"]
    assert scores["dice"]["mean"][1] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert scores["dice"]["std"][1] == pytest.approx(abs(2 / 3 - 4 / 5) / 2)
    assert scores["iou"]["mean"][1] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert scores["dice"]["mean"][2] is None and scores["dice"]["std"][2] is None
    assert scores["per_subject"]["a"]["dice"][1] == pytest.approx(2 / 3)
    # One foreground class per subject: Generalized Dice equals its Dice.
    assert scores["generalized_dice"]["mean"] == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert json.loads(json.dumps(scores, allow_nan=False)) == scores


def test_subject_rows_need_not_be_contiguous() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (6, 4, 4)).astype(np.uint8)
    pred = np.where(rng.random(truth.shape) < 0.8, truth, 0).astype(np.uint8)
    order = np.array([0, 3, 1, 4, 2, 5])
    ids = np.array(["s0", "s0", "s0", "s1", "s1", "s1"])
    assert subject_scores(pred[order], truth[order], ids[order], 3)["dice"] == subject_scores(
        pred, truth, ids, 3
    )["dice"]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 0}, "depth=0 must be >= 1"),
        ({"crop_size": 20}, "crop_size=20 must be 0 .* multiple of the net's stride"),
        ({"lr": 0.0}, "lr=0.0 must be a positive"),
        ({"class_weights": (1.0, -1.0)}, "class_weights=.* finite weight >= 0"),
        ({"iterations": 2.5}, "iterations must be an integer"),
        ({"dice_weight": -1.0}, "dice_weight=-1.0"),
        ({"lr": "fast"}, "lr must be a number, got 'fast'"),
        ({"labelled_slices": 1.5}, r"labelled_slices=1.5 must be a fraction in \[0, 1\]"),
    ],
)
def test_config_validation(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        SegmentorConfig(**kwargs)  # type: ignore[arg-type]


def test_bad_training_inputs_raise(data: tuple[np.ndarray, ...]) -> None:
    x, y = data[0][:2], data[1][:2]
    config = SegmentorConfig(ngf=4, depth=3, iterations=1, batch_size=2)
    with pytest.raises(InputError, match=r"slices of shape 30x32 \(images \(2, 30, 32\)\)"):
        train_segmentor(x[:, :30], y[:, :30], 4, config)
    with pytest.raises(InputError, match=r"images \(2, 32, 32\) and labels \(1, 32, 32\)"):
        train_segmentor(x, y[:1], 4, config)
    with pytest.raises(InputError, match="holds label 3, outside"):
        train_segmentor(x, y, 3, config)
    with pytest.raises(InputError, match="expects images \\(N, H, W\\)"):
        train_segmentor(x[0], y[0], 4, config)
    with pytest.raises(InputError, match="crop_size 64 exceeds"):
        train_segmentor(x, y, 4, SegmentorConfig(crop_size=64))
    with pytest.raises(ConfigError, match="has 2 entries for 4 classes"):
        train_segmentor(x, y, 4, SegmentorConfig(class_weights=(1.0, 2.0)))


def test_bad_scoring_inputs_raise(trained: torch.nn.Module) -> None:
    labels = np.zeros((2, 4, 4), np.uint8)
    with pytest.raises(InputError, match="got 3 subject ids for label maps of shape"):
        subject_scores(labels, labels, ["a", "b", "c"], 2)
    with pytest.raises(InputError, match="got 1 class names for 2 classes"):
        subject_scores(labels, labels, ["a", "b"], 2, class_names=["bg"])
    with pytest.raises(InputError, match="slices of shape 30x30"):
        predict_labels(trained, np.zeros((1, 30, 30), np.float32))


def _sparse(n: int, seed: int, with_lesion: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise slices; the first ``with_lesion`` hold one bright 5x5 square (class 1)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 32, 32), np.uint8)
    for i in range(with_lesion):
        top, left = rng.integers(4, 23, 2)
        labels[i, top : top + 5, left : left + 5] = 1
    images = np.where(labels == 1, 0.8, -0.2) + rng.normal(0, 0.15, labels.shape)
    return np.clip(images, -1, 1).astype(np.float32), labels


def test_labelled_slices_teach_a_sparse_class_a_uniform_draw_misses() -> None:
    # 2 of 96 slices hold the class: 40 uniform batches of 4 show it about 3 times.
    x, y = _sparse(96, seed=0, with_lesion=2)
    x_test, y_test = _sparse(8, seed=1, with_lesion=8)
    config = SegmentorConfig(ngf=8, depth=2, iterations=40, batch_size=4, lr=3e-3, seed=0)
    dice = {}
    for share in (0.0, 0.5):
        net = train_segmentor(x, y, 2, dataclasses.replace(config, labelled_slices=share))
        dice[share] = float(dice_per_class(predict_labels(net, x_test), y_test, 2)[1])
    assert dice[0.5] > 0.8 and dice[0.0] < dice[0.5] - 0.3, dice
    # None (left to the caller) trains exactly as 0: the uniform draw, bit for bit.
    a = train_segmentor(x, y, 2, dataclasses.replace(config, labelled_slices=None))
    b = train_segmentor(x, y, 2, dataclasses.replace(config, labelled_slices=0.0))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


@pytest.mark.parametrize(
    ("names", "weights", "share", "steps"),
    [
        (("background", "csf", "gm", "wm"), None, 0.0, 150),
        (("background", "lesion"), (0.05, 0.95), 0.5, 400),
        (("background", "IRF", "SRF", "PED"), (0.05, 0.95, 0.95, 0.95), 0.5, 400),
        (("background", "csf", "Lesion"), (0.05, 0.5, 0.95), 0.5, 400),
    ],
)  # fmt: skip
def test_automatic_settings_weigh_up_sparse_pocket_classes(
    names: tuple[str, ...], weights: tuple[float, ...] | None, share: float, steps: int
) -> None:
    resolved = SegmentorConfig().resolved(names)
    assert resolved.class_weights == (None if weights is None else pytest.approx(weights))
    assert (resolved.labelled_slices, resolved.iterations, resolved.steps) == (share, steps, steps)
    # What the user set is kept.
    mine = SegmentorConfig(iterations=20, class_weights=(1.0,) * len(names), labelled_slices=0.25)
    assert mine.resolved(names) == mine
    assert SegmentorConfig().steps == 150  # train_segmentor's budget when left automatic
