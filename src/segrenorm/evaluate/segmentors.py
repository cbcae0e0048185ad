"""Post-hoc segmentors for the downstream lens (the layout of the paper's Table V).

A segmentor is a :class:`~segrenorm.models.nn.segnet.SegUNet` trained on one domain's training
slices only, then applied to other images: the same domain's test slices, the other
domain's, or harmonized ones. The drop in Dice from same-domain to cross-domain is the
domain gap; harmonization should close it.

Training is small and quick on purpose: with the defaults, one segmentor takes ~15 s of
one CPU thread on 112x128 slices, whatever the number of training slices. There is no
flip augmentation: anatomy has a fixed orientation in the slice cache, and a segmentor
that saw mirrored brains would be tested on images it never meets.

Example:
    >>> import numpy as np
    >>> images = np.zeros((4, 16, 16), np.float32)
    >>> labels = np.zeros((4, 16, 16), np.uint8)
    >>> labels[:, 4:12, 4:12] = 1
    >>> images[labels == 1] = 1.0
    >>> config = SegmentorConfig(ngf=4, depth=2, iterations=5, batch_size=2)
    >>> net = train_segmentor(images, labels, 2, config)
    >>> predict_labels(net, images).shape
    (4, 16, 16)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.overlap import check_label_maps
from segrenorm.models.nn.segnet import SegUNet
from segrenorm.training.losses import weighted_ce
from segrenorm.training.optim import linear_decay
from segrenorm.vocabulary import pocket_classes

__all__ = [
    "DENSE_ITERATIONS",
    "POCKET_BACKGROUND_WEIGHT",
    "POCKET_ITERATIONS",
    "SegmentorConfig",
    "predict_labels",
    "soft_dice_loss",
    "train_segmentor",
]

#: Progress callback: (iterations done, loss of the last batch).
Progress = Callable[[int, float], None]
#: Optimiser steps of an automatic budget (``iterations=None``): tissue classes, and caches
#: with pocket classes (lesions, retinal fluid; :func:`~segrenorm.vocabulary.pocket_classes`).
DENSE_ITERATIONS, POCKET_ITERATIONS = 150, 400
#: Cross-entropy weight of the background on a pocket cache (pocket classes get
#: ``1 - POCKET_BACKGROUND_WEIGHT``, other classes 0.5), with automatic ``class_weights``.
POCKET_BACKGROUND_WEIGHT = 0.05


@dataclass(frozen=True)
class SegmentorConfig:
    """How a post-hoc segmentor is built and trained.

    The defaults were chosen on a simulated 2 mm T1 pair (112x128 slices, 4 classes):
    150 whole-slice steps of 4 take ~15 s of one CPU core. Without the soft Dice term
    the small CSF class often collapsed at this budget; random crops trained worse than
    whole slices, because instance norm then sees other statistics than at test time.

    Args:
        ngf: SegUNet width at full resolution.
        depth: SegUNet downsamplings; slices (or crops) must be multiples of ``2**depth``.
        iterations: optimiser steps; None: automatic (:meth:`resolved`):
            :data:`DENSE_ITERATIONS`, or :data:`POCKET_ITERATIONS` on a cache with pocket
            classes.
        batch_size: slices (or crops) per step.
        crop_size: side of random square training crops; 0 trains on whole slices.
        foreground_crops: centre each crop on a random labelled (non-background) pixel,
            so crops hold anatomy rather than empty background; slices without labels
            get a uniformly placed crop.
        lr: Adam learning rate (betas 0.9, 0.999).
        decay_start: fraction of ``iterations`` after which the learning rate decays
            linearly to zero (1.0 keeps it constant).
        class_weights: cross-entropy weight per class, background first; None: automatic
            (:meth:`resolved`): uniform, or on a cache with pocket classes
            :data:`POCKET_BACKGROUND_WEIGHT` for the background, 0.95 for each pocket class
            and 0.5 for any other class.
        dice_weight: weight of a soft Dice term over the foreground classes added to the
            weighted cross-entropy (0 disables it).
        seed: seeds the weights, the batch order and the crops; same seed, same net.
        labelled_slices: fraction of each batch drawn from the slices that hold a
            non-background label (sparse classes such as lesions: a uniform draw almost never
            shows one); 0 draws uniformly. None leaves the choice to the caller: the
            evaluation's segmentation lens takes 0.5 on a cache with a ``lesion`` class and 0
            otherwise; :func:`train_segmentor` reads None as 0.
    """

    ngf: int = 8
    depth: int = 3
    iterations: int | None = None
    batch_size: int = 4
    crop_size: int = 0
    foreground_crops: bool = True
    lr: float = 3e-3
    decay_start: float = 0.5
    class_weights: tuple[float, ...] | None = None
    dice_weight: float = 1.0
    seed: int = 0
    labelled_slices: float | None = None

    def __post_init__(self) -> None:
        for name in ("ngf", "depth", "iterations", "batch_size", "crop_size", "seed"):
            value = getattr(self, name)
            if name == "iterations" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"SegmentorConfig.{name} must be an integer, got {value!r}.")
        for name in ("lr", "decay_start", "dice_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"SegmentorConfig.{name} must be a number, got {value!r}.")
        share = self.labelled_slices
        if share is not None and (
            isinstance(share, bool)
            or not isinstance(share, (int, float))
            or not 0.0 <= float(share) <= 1.0
        ):
            raise ConfigError(
                f"SegmentorConfig.labelled_slices={share!r} must be a fraction in [0, 1] or "
                "None (automatic)."
            )
        if not isinstance(self.foreground_crops, bool):
            raise ConfigError(
                f"SegmentorConfig.foreground_crops must be true or false, got "
                f"{self.foreground_crops!r}."
            )
        for name in ("ngf", "depth", "iterations", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"SegmentorConfig.{name}={getattr(self, name)} must be >= 1.")
        stride = 2**self.depth
        if self.crop_size < 0 or self.crop_size % stride:
            raise ConfigError(
                f"SegmentorConfig.crop_size={self.crop_size} must be 0 (whole slices) or a "
                f"positive multiple of the net's stride 2**depth = {stride}."
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"SegmentorConfig.lr={self.lr} must be a positive number.")
        if not 0.0 <= self.decay_start <= 1.0:
            raise ConfigError(f"SegmentorConfig.decay_start={self.decay_start} must lie in [0, 1].")
        if not (math.isfinite(self.dice_weight) and self.dice_weight >= 0):
            raise ConfigError(
                f"SegmentorConfig.dice_weight={self.dice_weight} must be a number >= 0."
            )
        if self.class_weights is not None:
            weights = tuple(float(w) for w in self.class_weights)
            if (
                len(weights) < 2
                or not all(math.isfinite(w) and w >= 0 for w in weights)
                or not any(w > 0 for w in weights)
            ):
                raise ConfigError(
                    f"SegmentorConfig.class_weights={self.class_weights!r} must give one "
                    "finite weight >= 0 per class (at least 2, not all zero), or be None."
                )
            object.__setattr__(self, "class_weights", weights)

    @property
    def steps(self) -> int:
        """The optimiser steps: ``iterations``, or :data:`DENSE_ITERATIONS` when automatic."""
        return DENSE_ITERATIONS if self.iterations is None else int(self.iterations)

    def resolved(self, class_names: Sequence[str]) -> SegmentorConfig:
        """The automatic settings (None fields) filled in for a cache's classes.

        Sparse pocket classes (MS lesions cover about 0.01% of a slice, retinal fluid
        0.02-0.1%) are not learned at the tissue budget with uniform weights: on the simulated
        FLAIR and OCT benchmarks such a segmentor predicted no pocket at all, or one class
        only, depending on its seed (in-domain lesion Dice 0.00-0.06; fluid Dice 0.0 to 0.69
        with one class collapsed). Half of each batch from slices holding a label, the
        background weighed 0.05 against 0.95 and 400 steps gave lesion Dice 0.40-0.43 and
        fluid Dice 0.61-0.95 (BENCHMARKS.md). A cache without pocket classes keeps the tissue
        settings: uniform weights, uniform batches, 150 steps.

        Args:
            class_names: the cache's class names, background first.
        """
        pockets = pocket_classes(class_names)
        weights = self.class_weights
        if weights is None and pockets:
            weights = tuple(
                POCKET_BACKGROUND_WEIGHT if k == 0
                else 1.0 - POCKET_BACKGROUND_WEIGHT if k in pockets else 0.5
                for k in range(len(class_names))
            )  # fmt: skip
        share = self.labelled_slices
        if share is None:
            share = 0.5 if pockets else 0.0
        steps = self.iterations
        if steps is None:
            steps = POCKET_ITERATIONS if pockets else DENSE_ITERATIONS
        return dataclasses.replace(
            self, class_weights=weights, labelled_slices=share, iterations=steps
        )

    @property
    def stride(self) -> int:
        """Slice and crop sides must be multiples of this."""
        return int(2**self.depth)


def soft_dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """``1 -`` the mean soft Dice of the foreground classes, pooled over the batch.

    Args:
        logits: (B, C, H, W) unnormalised scores, C >= 2.
        target: (B, H, W) int64 class indices in [0, C).
    """
    probs = logits.softmax(dim=1)[:, 1:]  # (B, C-1, H, W)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(probs.dtype)
    inter = (probs * onehot).sum(dim=(0, 2, 3))
    total = probs.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    return 1.0 - ((2 * inter + 1.0) / (total + 1.0)).mean()


def _check_images(images: np.ndarray, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 3 or images.shape[0] == 0:
        raise InputError(
            f"{what} expects images (N, H, W) with N >= 1, got shape {images.shape}: "
            "stack the 2D slices along axis 0."
        )
    if images.dtype.kind != "f":
        raise InputError(
            f"{what} expects float images in [-1, 1], got dtype {images.dtype}: scale them "
            "as the slice cache does."
        )
    return images


def _check_stride(shape: tuple[int, ...], stride: int, what: str) -> None:
    h, w = shape[-2:]
    if h % stride or w % stride:
        raise InputError(
            f"{what}: slices of shape {h}x{w} (images {shape}) are not multiples of the "
            f"segmentor's stride {stride}: pad them (segrenorm prepare --pad-multiple) or "
            "lower depth."
        )


def _crop(batch: Tensor, tops: np.ndarray, lefts: np.ndarray, size: int) -> Tensor:
    """(B, H, W) -> (B, size, size), sample i cut at (tops[i], lefts[i])."""
    return torch.stack(
        [b[t : t + size, s : s + size] for b, t, s in zip(batch, tops, lefts, strict=True)]
    )


def _crop_origins(
    labels: np.ndarray, pick: np.ndarray, size: int, foreground: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of one crop per picked slice (see ``SegmentorConfig.foreground_crops``)."""
    h, w = labels.shape[1:]
    tops = rng.integers(0, h - size + 1, size=len(pick))
    lefts = rng.integers(0, w - size + 1, size=len(pick))
    if foreground:
        for k, row in enumerate(pick):
            pixels = np.flatnonzero(labels[row])
            if pixels.size:
                cy, cx = divmod(int(pixels[rng.integers(pixels.size)]), w)
                tops[k] = min(max(cy - size // 2, 0), h - size)
                lefts[k] = min(max(cx - size // 2, 0), w - size)
    return tops, lefts


def train_segmentor(
    images: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    config: SegmentorConfig,
    *,
    progress: Progress | None = None,
    device: str | torch.device = "cpu",
) -> SegUNet:
    """Train a SegUNet on one domain's slices with weighted cross-entropy (+ soft Dice).

    Deterministic for a given ``config.seed`` on a given device and thread count; the
    global torch and numpy random states are left untouched.

    Args:
        images: (N, H, W) float slices in [-1, 1].
        labels: (N, H, W) integer label maps (uint8 in the cache) in [0, n_classes).
        n_classes: classes, background included.
        config: widths, budget and optimiser settings.
        progress: called after every step with (steps done, batch loss).
        device: where to train; the net is returned there.

    Returns:
        The trained net, in eval mode.

    Raises:
        InputError: images and labels of other shapes or dtypes, labels out of range,
            slices (or crops) not fitting the net's stride.
        ConfigError: ``config.class_weights`` of the wrong length.
    """
    images = _check_images(images, "train_segmentor")
    labels = np.asarray(labels)
    if labels.shape != images.shape:
        raise InputError(
            f"train_segmentor got images {images.shape} and labels {labels.shape}: give one "
            "label map per slice, of the slice's shape."
        )
    check_label_maps(labels, labels, n_classes)
    n, h, w = images.shape
    crop = config.crop_size
    if crop == 0:
        _check_stride(images.shape, config.stride, "train_segmentor")
    elif crop > min(h, w):
        raise InputError(
            f"train_segmentor: crop_size {crop} exceeds the slices' shape {h}x{w}; lower it "
            "or use 0 for whole slices."
        )
    weights = config.class_weights or (1.0,) * n_classes
    if len(weights) != n_classes:
        raise ConfigError(
            f"SegmentorConfig.class_weights has {len(weights)} entries for {n_classes} "
            "classes: give one weight per class, background first."
        )
    if not np.isfinite(images).all():
        raise InputError("train_segmentor: images contain NaN or infinite values.")

    device = torch.device(device)
    x_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(device)
    y_all = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)).to(device)
    class_weights = torch.tensor(weights, dtype=torch.float32, device=device)
    rng = np.random.default_rng(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = SegUNet(n_classes=n_classes, ngf=config.ngf, depth=config.depth).to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    steps = config.steps
    decay_from = int(config.decay_start * steps)

    def lr_factor(step: int) -> float:
        return linear_decay(step, constant=decay_from, decay=steps - decay_from + 1)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    net.train()
    order = np.zeros(0, dtype=np.int64)
    labelled = np.flatnonzero(labels.reshape(n, -1).any(axis=1))
    n_labelled = 0
    if labelled.size:
        n_labelled = round(float(config.labelled_slices or 0.0) * config.batch_size)
    lab_order = np.zeros(0, dtype=np.int64)
    n_uniform = config.batch_size - n_labelled
    for step in range(steps):
        if order.size < n_uniform:  # epochs of shuffled slices, without repeats
            order = np.concatenate([order, rng.permutation(n)])
        pick, order = order[:n_uniform], order[n_uniform:]
        if n_labelled:  # the same, over the slices holding a label
            if lab_order.size < n_labelled:
                lab_order = np.concatenate([lab_order, labelled[rng.permutation(labelled.size)]])
            pick, lab_order = np.concatenate([pick, lab_order[:n_labelled]]), lab_order[n_labelled:]
        index = torch.from_numpy(pick).to(device)
        x, y = x_all[index], y_all[index]  # (B, H, W)
        if crop:
            tops, lefts = _crop_origins(labels, pick, crop, config.foreground_crops, rng)
            x, y = _crop(x, tops, lefts, crop), _crop(y, tops, lefts, crop)
        logits = net(x[:, None])  # (B, n_classes, H, W)
        loss = weighted_ce(logits, y, class_weights)
        if config.dice_weight:
            loss = loss + config.dice_weight * soft_dice_loss(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if progress is not None:
            progress(step + 1, float(loss.detach()))
    return net.eval()


def predict_labels(net: SegUNet, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Segment slices: the argmax class of every pixel.

    Args:
        net: a trained segmentor (its train/eval mode is restored afterwards).
        images: (N, H, W) float slices in [-1, 1], sides multiples of ``net.stride``.
        batch_size: slices per forward pass.

    Returns:
        (N, H, W) uint8 label maps.
    """
    images = _check_images(images, "predict_labels")
    _check_stride(images.shape, net.stride, "predict_labels")
    if batch_size < 1:
        raise InputError(f"predict_labels batch_size={batch_size} must be >= 1.")
    if net.n_classes > 256:
        raise InputError(f"predict_labels returns uint8 labels: {net.n_classes} classes > 256.")
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    out = np.empty(images.shape, dtype=np.uint8)
    try:
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                chunk = np.asarray(images[start : start + batch_size], dtype=np.float32)
                x = torch.from_numpy(chunk).to(device)[:, None]  # (b, 1, H, W)
                out[start : start + len(chunk)] = net(x).argmax(dim=1).to(torch.uint8).cpu()
    finally:
        net.train(was_training)
    return out
