"""Pseudo-labels for sites without label maps: ``prepare --auto-labels gmm|segnet``.

A site is labelled (every subject has a label map) or unlabelled (none has). When some sites are
labelled and others not, ``prepare`` needs a pseudo-labeller for the others;
:func:`~segrenorm.data.labelplan.plan_auto_labels` checks the listing and the choice, before
anything is written.

The labelled *reference* site is the last labelled site in cache order (in a two-site cache:
the target, when it is labelled). ``prepare`` processes the labelled subjects first, then
:meth:`~segrenorm.data.labelplan.AutoLabelPlan.fit` gives the reference site's *training*
slices to the labeller, then every unlabelled volume is labelled on the recipe's grid, after the
recipe's own bias correction, mask and scaling, so the pseudo-labels match the cached slices.
Each pseudo-label map is also written into the cache on the subject's own image grid
(:func:`write_pseudo_label`), so a user can open it over the image.

Two labellers:

* ``gmm`` (:class:`GMMLabeller`, here): a 3-class Gaussian mixture (scikit-learn, seeded) on the
  scaled, N4-corrected intensities inside the foreground mask, then spatial smoothing by
  Gaussian-smoothed posteriors: each class posterior is convolved with a Gaussian (normalised
  inside the mask, so nothing bleeds in from the background) before the argmax. This is one
  mean-field step of an MRF prior with a Gaussian neighbourhood: it removes isolated voxels
  like ICM does, but has no visiting order, no iteration count and gives the same labels on
  every machine. Components are named by intensity order: the darkest gets the reference
  site's class with the lowest mean intensity, and so on. Without a labelled site the classes
  are ``background, dark, mid, bright`` (for T1: csf, gm, wm; ``--class-names`` renames them).
* ``segnet``: the reference site's segmentation network after histogram matching; it needs
  models and evaluate code, so it lives in :mod:`segrenorm.workflows.autolabel` and reaches
  ``prepare`` as a :class:`PseudoLabeller` object (dependency injection).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

from segrenorm.data.slicing import ScaledVolume, SliceRecipe
from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.readwrite import save_label

__all__ = [
    "AUTO_LABEL_METHODS",
    "GMM_CLASS_NAMES",
    "GMMLabeller",
    "PseudoLabeller",
    "ReferenceSite",
    "pseudo_label_name",
    "to_image_grid",
    "write_pseudo_label",
]

#: The ``--auto-labels`` choices.
AUTO_LABEL_METHODS: tuple[str, ...] = ("gmm", "segnet")
#: Class names of gmm pseudo-labels when no site is labelled (T1: csf, gm, wm).
GMM_CLASS_NAMES: tuple[str, ...] = ("background", "dark", "mid", "bright")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass(frozen=True)
class ReferenceSite:
    """The labelled site a pseudo-labeller learns from: its training subjects' cached slices.

    Args:
        name: the site's name.
        key: its cache key (``"A"``, ``"B"``, ...).
        images: per training subject, (n, H, W) float32 slices in [-1, 1] (shapes may differ
            between subjects: the slices are not padded yet).
        labels: per subject, (n, H, W) uint8 class indices.
        masks: per subject, (n, H, W) uint8 foreground.
        n_classes: classes of the cache, background included.
    """

    name: str
    key: str
    images: tuple[np.ndarray, ...]
    labels: tuple[np.ndarray, ...]
    masks: tuple[np.ndarray, ...]
    n_classes: int


class PseudoLabeller(Protocol):
    """What ``prepare`` needs from a pseudo-labeller.

    ``method`` is the name recorded as each subject's ``label_source``; ``needs_reference``
    says whether it must learn from a labelled site.
    """

    method: str
    needs_reference: bool

    def fit(self, reference: ReferenceSite | None) -> None:
        """Learn from the reference site (None when no site is labelled)."""

    def label(self, volume: ScaledVolume, recipe: SliceRecipe) -> np.ndarray:
        """(X, Y, Z) integer labels of a volume scaled by ``recipe``, on the recipe's grid."""

    def settings(self) -> dict[str, Any]:
        """The method and its settings, for the manifest's ``auto_labels``."""


@dataclass
class GMMLabeller:
    """A 3-class Gaussian mixture on foreground intensities with Gaussian-smoothed posteriors.

    Args:
        sigma: standard deviation of the posterior smoothing in mm (voxels of 1 mm when the
            recipe has no spacing); 0 turns smoothing off. The default is 1 mm, half a voxel
            of the 2 mm benchmark: on one of its training subjects 0, 1 and 1.5 mm gave Dice
            within 0.03 of each other (``benchmarks/autolabels.py`` measures more).
        seed: seed of the mixture fit and of the voxel subsample it is fitted on.
        max_voxels: fit on at most this many foreground voxels (all voxels are labelled).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> truth = np.repeat(np.arange(1, 4), 2000).reshape(30, 20, 10)
        >>> data = (truth - 2.0) * 0.5 + rng.normal(0, 0.05, truth.shape)
        >>> labeller = GMMLabeller(sigma=0.0)
        >>> labeller.fit(None)
        >>> volume = ScaledVolume(data, np.ones(truth.shape, bool), None)  # type: ignore[arg-type]
        >>> bool((labeller.label(volume, SliceRecipe()) == truth).mean() > 0.99)
        True
    """

    sigma: float = 1.0
    seed: int = 0
    max_voxels: int = 200_000
    method: str = field(default="gmm", init=False)
    needs_reference: bool = field(default=False, init=False)
    class_of_rank: tuple[int, int, int] = field(default=(1, 2, 3), init=False)

    def __post_init__(self) -> None:
        if not (np.isfinite(self.sigma) and self.sigma >= 0):
            raise ConfigError(f"gmm sigma {self.sigma} must be a number >= 0 (mm)")
        if self.max_voxels < 100:
            raise ConfigError(f"gmm max_voxels {self.max_voxels} must be at least 100")

    def fit(self, reference: ReferenceSite | None) -> None:
        """Rank the reference site's classes by mean intensity (dark, mid, bright).

        Args:
            reference: the labelled site, or None: classes 1, 2, 3 are dark, mid, bright.

        Raises:
            ConfigError: the reference site has other than 4 classes (background + 3).
            InputError: a class never occurs in the reference site's training slices.
        """
        if reference is None:
            self.class_of_rank = (1, 2, 3)
            return
        if reference.n_classes != 4:
            raise ConfigError(
                f"--auto-labels gmm finds 3 tissue classes, but the labelled site "
                f"{reference.name!r} has {reference.n_classes} classes (background + "
                f"{reference.n_classes - 1}): use --auto-labels segnet, which learns that "
                "site's own classes"
            )
        values = np.concatenate(
            [im[lab > 0] for im, lab in zip(reference.images, reference.labels, strict=True)]
        )
        classes = np.concatenate([lab[lab > 0] for lab in reference.labels])
        means = []
        for k in (1, 2, 3):
            if not np.any(classes == k):
                raise InputError(
                    f"class {k} never occurs in the training slices of the labelled site "
                    f"{reference.name!r}, so gmm cannot rank it by intensity: check its label "
                    "maps, or use --auto-labels segnet"
                )
            means.append(float(values[classes == k].mean()))
        ranked = np.argsort(means, kind="stable") + 1
        self.class_of_rank = (int(ranked[0]), int(ranked[1]), int(ranked[2]))

    def label(self, volume: ScaledVolume, recipe: SliceRecipe) -> np.ndarray:
        """Label the foreground of a scaled volume: 0 outside it, classes 1..3 inside.

        Args:
            volume: the recipe's scaled volume with its foreground mask.
            recipe: the slicing recipe; its spacing turns ``sigma`` into voxels.

        Raises:
            ConfigError: the volume has no foreground mask (``--no-mask``).
            InputError: fewer than 3 distinct intensities inside the mask.
        """
        from sklearn.mixture import GaussianMixture  # scikit-learn is slow to import

        if volume.mask is None:
            raise ConfigError(
                "--auto-labels gmm classifies tissue inside the foreground mask, but the cache "
                "is prepared without one (--no-mask): drop --no-mask or use --auto-labels segnet"
            )
        mask = volume.mask.astype(bool)
        values = volume.scaled[mask].astype(np.float64)
        if np.unique(values[: 10 * self.max_voxels]).size < 3:
            raise InputError(
                f"gmm needs at least 3 distinct intensities inside the foreground mask, found "
                f"{np.unique(values).size}: the volume cannot be split into 3 tissues"
            )
        rng = np.random.default_rng(self.seed)
        sample = values if values.size <= self.max_voxels else rng.choice(values, self.max_voxels)
        # k-means starts (best of 3, seeded): quantile starts fell into a local optimum that
        # split a large bright class and merged two small darker ones.
        gmm = GaussianMixture(3, n_init=3, random_state=self.seed, max_iter=200)
        gmm.fit(sample[:, None])
        rank = np.argsort(gmm.means_[:, 0])  # component indices, darkest first
        posterior = gmm.predict_proba(values[:, None])[:, rank]  # (n_fg, 3), dark..bright
        if self.sigma > 0:
            sigma = [self.sigma / s for s in (recipe.spacing or (1.0, 1.0, 1.0))]
            weight = ndimage.gaussian_filter(mask.astype(np.float32), sigma)
            for k in range(3):
                full = np.zeros(mask.shape, np.float32)
                full[mask] = posterior[:, k]
                smooth = ndimage.gaussian_filter(full, sigma)
                posterior[:, k] = smooth[mask] / np.maximum(weight[mask], 1e-6)
        out = np.zeros(mask.shape, np.uint8)
        out[mask] = np.asarray(self.class_of_rank, np.uint8)[posterior.argmax(axis=1)]
        return out

    def settings(self) -> dict[str, Any]:
        """The method and its settings, for the manifest."""
        return {
            "method": self.method,
            "components": 3,
            "smoothing": "gaussian-smoothed posteriors",
            "sigma_mm": float(self.sigma),
            "seed": int(self.seed),
            "max_voxels": int(self.max_voxels),
            "class_of_rank": list(self.class_of_rank),
        }


def pseudo_label_name(key: str, subject: str) -> str:
    """Where a subject's pseudo-label map lies inside the cache: ``pseudo_labels/KEY/ID.nii.gz``
    (characters other than letters, digits, ``.``, ``_`` and ``-`` become ``_``)."""
    return f"pseudo_labels/{key}/{_UNSAFE.sub('_', subject)}.nii.gz"


def to_image_grid(labels: np.ndarray, grid: Geometry, image: Geometry) -> np.ndarray:
    """Labels on the recipe's grid, moved to an image's own grid by nearest neighbour.

    Each image voxel takes the label of the grid voxel nearest its world position; when the
    grid is the image's reorientation only, this is an exact permutation of the voxels.

    Args:
        labels: (X, Y, Z) labels on ``grid``.
        grid: the recipe's (canonical, resampled) grid.
        image: the image's own grid.

    Returns:
        Labels of ``image.shape``, same dtype.
    """
    matrix = np.linalg.inv(grid.affine) @ image.affine  # image voxel -> grid voxel
    moved = ndimage.affine_transform(
        labels, matrix[:3, :3], offset=matrix[:3, 3], output_shape=image.shape, order=0,
        mode="nearest",
    )  # fmt: skip
    return np.asarray(moved, dtype=labels.dtype)


def write_pseudo_label(
    labeller: PseudoLabeller,
    volume: ScaledVolume,
    recipe: SliceRecipe,
    *,
    grid: Geometry,
    image: Geometry,
    path: Path,
    subject: str,
    n_classes: int | None,
) -> np.ndarray:
    """Pseudo-label one scaled volume and write the map on the image's own grid.

    Args:
        labeller: a fitted pseudo-labeller.
        volume: the volume scaled by ``recipe``, on ``grid``.
        recipe: the slicing recipe.
        grid: the recipe's grid of the volume.
        image: the image's own grid (the file's).
        path: the label file to write (``.nii.gz``); its folder is created.
        subject: the subject's id, for messages.
        n_classes: the cache's classes, if known: labels beyond them are refused.

    Returns:
        (X, Y, Z) uint8 labels on ``grid``, 0 outside the foreground mask.

    Raises:
        InputError: the labeller returned labels of another shape or outside the classes.
    """
    labels = np.asarray(labeller.label(volume, recipe))
    limit = 256 if n_classes is None else n_classes
    if (
        labels.shape != volume.scaled.shape
        or labels.dtype.kind not in "iu"
        or (labels.size and (int(labels.min()) < 0 or int(labels.max()) >= limit))
    ):
        raise InputError(
            f"subject {subject!r}: the {labeller.method} pseudo-labeller returned {labels.dtype} "
            f"labels of shape {labels.shape}; expected integers 0..{limit - 1} of shape "
            f"{volume.scaled.shape}"
        )
    labels = labels.astype(np.uint8)
    if volume.mask is not None:
        labels[~volume.mask.astype(bool)] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    save_label(to_image_grid(labels, grid, image), path, geometry=image)
    return labels
