"""``prepare --auto-labels segnet``: the labelled site's segmentation network as a pseudo-labeller.

The data stage may not import models or evaluate code, so ``prepare`` takes its pseudo-labeller
as an object (:class:`~segrenorm.data.autolabels.PseudoLabeller`); this module builds the one
for ``segnet`` and :func:`auto_labeller` turns a ``--auto-labels`` name into what
:func:`~segrenorm.data.prepare.prepare_cache` takes.

:class:`SegnetLabeller` trains a post-hoc segmentor
(:func:`~segrenorm.evaluate.segmentors.train_segmentor`, a
:class:`~segrenorm.models.nn.segnet.SegUNet`) on the reference site's training slices, exactly as
the downstream lens trains its segmentors, and fits a histogram matcher
(:class:`~segrenorm.evaluate.baselines.HistogramMatcher`) on those subjects' foregrounds. Each
unlabelled volume, already bias-corrected, masked and scaled by the recipe, is histogram-matched
onto the reference site (classical normalisation), cut into slices along the recipe's axis,
padded to the net's stride, segmented, and the slices are stacked back into a label volume.

Example:
    >>> from segrenorm.data.prepare import prepare_cache
    >>> labeller = auto_labeller("segnet")
    >>> cache = prepare_cache(records, "cache/", auto_labels=labeller)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segrenorm.data.autolabels import AUTO_LABEL_METHODS, GMMLabeller, PseudoLabeller, ReferenceSite
from segrenorm.data.slicing import ScaledVolume, SliceRecipe
from segrenorm.errors import ConfigError
from segrenorm.evaluate.baselines import HistogramMatcher
from segrenorm.evaluate.segmentors import SegmentorConfig, predict_labels, train_segmentor
from segrenorm.models.nn.segnet import SegUNet
from segrenorm.volumes.spatial import pad_to_shape, round_up, stack_slices, unpad

__all__ = ["AUTOLABEL_SEGMENTOR", "SegnetLabeller", "auto_labeller"]

#: The segmentor of ``--auto-labels segnet``: the downstream lens's, with twice its budget
#: (pseudo-labels feed a whole training run). Not tuned: ``benchmarks/autolabels.py`` measures.
AUTOLABEL_SEGMENTOR = SegmentorConfig(iterations=300)


def _pad_stack(
    images: tuple[np.ndarray, ...], labels: tuple[np.ndarray, ...], stride: int
) -> tuple[np.ndarray, np.ndarray]:
    """Subjects' (n, H_i, W_i) slices padded to one shape, a multiple of ``stride``, stacked."""
    height = round_up(max(im.shape[1] for im in images), stride)
    width = round_up(max(im.shape[2] for im in images), stride)
    padded_images = [pad_to_shape(im, (height, width), -1.0)[0] for im in images]
    padded_labels = [pad_to_shape(lab, (height, width), 0)[0] for lab in labels]
    return np.concatenate(padded_images), np.concatenate(padded_labels)


@dataclass
class SegnetLabeller:
    """Pseudo-labels from the reference site's segmentation network after histogram matching.

    Args:
        config: the segmentor's widths, budget and seed.
        n_landmarks: quantile landmarks of the histogram matching.
        device: where the net trains and runs.
    """

    config: SegmentorConfig = AUTOLABEL_SEGMENTOR
    n_landmarks: int = 101
    device: str = "cpu"
    method: str = field(default="segnet", init=False)
    needs_reference: bool = field(default=True, init=False)
    net: SegUNet | None = field(default=None, init=False, repr=False)
    matcher: HistogramMatcher | None = field(default=None, init=False, repr=False)
    reference_site: str | None = field(default=None, init=False)

    def fit(self, reference: ReferenceSite | None) -> None:
        """Train the segmentor on the reference site's training slices and fit the matcher.

        Args:
            reference: the labelled site.

        Raises:
            ConfigError: no reference site (``segnet`` learns from one).
            InputError: slices or labels the segmentor cannot train on.
        """
        if reference is None:
            raise ConfigError(
                "--auto-labels segnet learns from a labelled site, and no site has label maps: "
                "give one site's labels, or use --auto-labels gmm"
            )
        images, labels = _pad_stack(reference.images, reference.labels, self.config.stride)
        self.net = train_segmentor(
            images, labels, reference.n_classes, self.config, device=self.device
        )
        foregrounds = [
            im[mask > 0] for im, mask in zip(reference.images, reference.masks, strict=True)
        ]
        self.matcher = HistogramMatcher(self.n_landmarks).fit(foregrounds)
        self.reference_site = reference.key

    def label(self, volume: ScaledVolume, recipe: SliceRecipe) -> np.ndarray:
        """Segment a scaled volume slice by slice after histogram matching.

        Args:
            volume: the recipe's scaled volume (background -1) and its mask.
            recipe: the slicing recipe: its axis cuts the slices.

        Returns:
            (X, Y, Z) uint8 labels on the recipe's grid.
        """
        if self.net is None or self.matcher is None:
            raise RuntimeError("SegnetLabeller.label called before fit")
        mask = np.ones(volume.scaled.shape, bool) if volume.mask is None else volume.mask
        matched = self.matcher.apply(volume.scaled, mask)
        slices = recipe.cut(matched)  # (n, H, W)
        stride = self.net.stride
        shape = (round_up(slices.shape[1], stride), round_up(slices.shape[2], stride))
        padded, pads = pad_to_shape(np.ascontiguousarray(slices), shape, -1.0)
        predicted = unpad(predict_labels(self.net, padded.astype(np.float32)), pads)
        return np.ascontiguousarray(stack_slices(predicted, recipe.axis))

    def settings(self) -> dict[str, Any]:
        """The method and its settings, for the manifest."""
        return {
            "method": self.method,
            "segmentor": dataclasses.asdict(self.config),
            "normalisation": "histogram matching onto the reference site's training foreground",
            "landmarks": int(self.n_landmarks),
        }


def auto_labeller(name: str | None, *, seed: int = 0, device: str = "cpu") -> PseudoLabeller | None:
    """The pseudo-labeller of a ``--auto-labels`` choice, for ``prepare_cache(auto_labels=)``.

    Args:
        name: ``"gmm"``, ``"segnet"`` or None (no pseudo-labels).
        seed: seed of the mixture fit or of the segmentor's weights and batches.
        device: where the segmentor trains (segnet only).

    Raises:
        ConfigError: an unknown name.
    """
    if name is None:
        return None
    if name == "gmm":
        return GMMLabeller(seed=seed)
    if name == "segnet":
        config = dataclasses.replace(AUTOLABEL_SEGMENTOR, seed=seed)
        return SegnetLabeller(config=config, device=device)
    raise ConfigError(f"unknown --auto-labels {name!r}: choose {', '.join(AUTO_LABEL_METHODS)}")
