"""What an evaluation looks at: the held-out slices of both sites, and harmonized versions.

Every lens of :mod:`segrenorm.evaluate.suite` compares *harmonized source* slices with the
target site. :class:`EvalData` holds the test split of a slice cache for both sites, with
labels, masks, and which subject and slice index each row is. A harmonization method
produces one array aligned row for row with :attr:`EvalData.source`, so all metrics line up.

Harmonized volumes written by ``segrenorm harmonize`` are brought back into that layout by
:func:`slices_from_volumes`: each file is reoriented, resampled and cut exactly as
``segrenorm prepare`` cut its source volume (the cache's
:class:`~segrenorm.data.slicing.SliceRecipe`), and scaled to ``[-1, 1]`` with its own
foreground percentiles inside the source volume's foreground mask (the scaling every
cached slice had), so harmonized and target slices share one intensity convention. An OCT
cache's recipe (its manifest's ``modality``) resamples with nearest neighbour, takes the
retina as that foreground and keeps the background, as ``prepare`` did; the masks of
:class:`SiteSlices` are the cache's own (the retina, for OCT).

Example:
    >>> data = EvalData.from_cache(SliceCache.open("cache/"))  # doctest: +SKIP
    >>> data.source.shape  # (N, H, W) float32 in [-1, 1]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segrenorm.data.slice_cache import SliceCache
from segrenorm.errors import CacheError, ConfigError, InputError
from segrenorm.vocabulary import check_direction, source_site, target_site

if TYPE_CHECKING:
    from segrenorm.data.slicing import SliceRecipe

__all__ = ["EvalData", "SiteSlices", "as_stacks", "recut_source", "slices_from_volumes"]


def as_stacks(images: np.ndarray, masks: np.ndarray | None, caller: str) -> np.ndarray:
    """(N, H, W) slices or (N, k, H, W) context stacks as stacks, checked against the masks.

    Args:
        images: slices, or the 2.5-D context stacks of a translator with k > 1 channels.
        masks: (N, H, W) foreground of the (centre) slices; None checks the rank only.
        caller: what needs them, for the message.

    Raises:
        InputError: images of another rank, or masks of another shape than the slices.
    """
    stacks = images[:, None] if images.ndim == 3 else images  # (N, k, H, W)
    if masks is None and stacks.ndim != 4:
        raise InputError(
            f"{caller} needs (N, H, W) slices or (N, k, H, W) stacks, got {images.shape}"
        )
    if masks is not None and (
        stacks.ndim != 4 or masks.ndim != 3 or stacks.shape[:1] + stacks.shape[2:] != masks.shape
    ):
        raise InputError(
            f"{caller} needs (N, H, W) images and masks of one shape, got {images.shape} and "
            f"{masks.shape} (a 2.5-D translator: (N, k, H, W) stacks over (N, H, W) masks)"
        )
    return stacks


#: Called per subject with (index, total, subject id) while volumes are read.
SubjectCallback = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SiteSlices:
    """The held-out slices of one site, row-aligned.

    Args:
        site: cache site key, ``"A"`` or ``"B"``.
        name: the site's human name.
        rows: the rows in the cache's site arrays.
        images: (N, H, W) float32 in [-1, 1].
        labels: (N, H, W) uint8 class indices.
        masks: (N, H, W) bool foreground.
        subjects: (N,) subject identifier of each row.
        index: (N,) slice index of each row along the slice axis of the canonical volume.
    """

    site: str
    name: str
    rows: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    masks: np.ndarray
    subjects: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return int(self.rows.size)

    def subject_rows(self) -> dict[str, np.ndarray]:
        """Positions (into this object's arrays) of each subject's slices, in order."""
        out: dict[str, np.ndarray] = {}
        for subject in dict.fromkeys(self.subjects.tolist()):
            out[str(subject)] = np.flatnonzero(self.subjects == subject)
        return out


def _site_slices(cache: SliceCache, site: str, split: str, fold: int | None) -> SiteSlices:
    rows = cache.rows(site, split, fold)
    index = cache.slices(site)  # a pair view reads its own site folder
    names = cache.site_names[0 if site == "A" else 1]
    return SiteSlices(
        site=site,
        name=names,
        rows=rows,
        images=np.asarray(cache.images(site)[rows], dtype=np.float32),
        labels=np.asarray(cache.labels(site)[rows], dtype=np.uint8),
        masks=np.asarray(cache.masks(site)[rows]).astype(bool),
        subjects=cache.subjects_of(site, rows),
        index=np.asarray(index[rows, 1], dtype=np.int64),
    )


def _check_shared_folds(cache: SliceCache, fold: int) -> None:
    """Refuse fold ``fold`` when a person at both sites is in it at one site only: the other
    site's training rows hold that person."""
    folds: dict[str, dict[str, int]] = {}
    for entry in cache.manifest["subjects"]:
        folds.setdefault(str(entry["subject"]), {})[entry["site"]] = int(entry["fold"])
    split = sorted(s for s, at in folds.items() if len(at) > 1 and len(set(at.values())) > 1
                   and fold in at.values())  # fmt: skip
    if split:
        raise CacheError(
            f"{cache.path}: subject(s) {', '.join(split)} are at both sites in different folds, "
            f"so fold {fold} would train on them at one site and score them at the other; "
            "prepare the cache with --folds loso (one fold per person at every site)"
        )


@dataclass(frozen=True)
class EvalData:
    """The evaluation split of a cache: source and target slices, and the cache itself.

    Args:
        cache: the slice cache.
        direction: ``"AB"`` (site A is the source) or ``"BA"``.
        source: the source site's test slices (what methods harmonize).
        target: the target site's test slices.
        fold: None for the cache's train/val/test split; a fold ``K`` holds out the
            subjects of fold ``K`` at both sites and trains on all the others
            (leave-one-subject-out, ``segrenorm evaluate --fold K``).
    """

    cache: SliceCache
    direction: str
    source: SiteSlices
    target: SiteSlices
    fold: int | None = None

    @classmethod
    def from_cache(
        cls,
        cache: SliceCache | str | Path,
        *,
        direction: str = "AB",
        split: str = "test",
        fold: int | None = None,
    ) -> EvalData:
        """Read the held-out slices of both sites.

        Args:
            cache: an opened cache or its folder.
            direction: ``"AB"`` or ``"BA"``.
            split: ``"test"`` (default), ``"val"`` or ``"all"``.
            fold: a cross-validation fold: its subjects (of both sites) are held out and
                every other subject is training data; ``split`` must then be ``"test"``.

        Raises:
            ConfigError: an unknown direction.
            CacheError: a site without held-out slices, or a cache without labels; with a
                fold, a person at both sites in different folds.
        """
        check_direction(direction)
        opened = cache if isinstance(cache, SliceCache) else SliceCache.open(cache)
        if not opened.manifest.get("has_labels", True):
            raise CacheError(
                f"{opened.path}: the cache has no label maps, but evaluation needs them "
                "(segmentation scores, per-tissue histograms); prepare it with --labels-a/-b."
            )
        if fold is not None:
            _check_shared_folds(opened, fold)
        source = _site_slices(opened, source_site(direction), split, fold)
        target = _site_slices(opened, target_site(direction), split, fold)
        for part in (source, target):
            if len(part) == 0 and fold is not None:
                raise CacheError(
                    f"{opened.path}: site {part.site} ({part.name}) has no subject in fold "
                    f"{fold}; evaluate a fold that holds subjects of both sites (prepare "
                    "--folds loso numbers them 0, 1, ... at every site)"
                )
            if len(part) == 0:
                raise CacheError(
                    f"{opened.path}: site {part.site} ({part.name}) has no {split} slices; "
                    f"re-run segrenorm prepare with a --{split}-fraction above 0."
                )
        return cls(cache=opened, direction=direction, source=source, target=target, fold=fold)

    @property
    def n_classes(self) -> int:
        """Segmentation classes, background included."""
        return self.cache.n_classes

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names, background first."""
        return self.cache.class_names

    def trains_on(self, entry: Mapping[str, Any]) -> bool:
        """Whether a manifest subject entry is training data here: split ``train``, or with a
        fold, any subject outside it."""
        if self.fold is None:
            return bool(entry["split"] == "train")
        return int(entry["fold"]) != self.fold

    def subject_entries(self, part: SiteSlices) -> dict[str, dict[str, Any]]:
        """The manifest's records of ``part``'s site (``self.source`` or ``self.target``), by
        subject id: where each subject's volumes are and how they were scaled."""
        subjects = self.cache.manifest["subjects"]
        return {str(s["subject"]): s for s in subjects if s["site"] == part.site}

    def source_stacks(self, k: int) -> np.ndarray:
        """The held-out source slices as 2.5-D context stacks, what a k-slice translator reads.

        Each row's stack is its cache neighbours by the one rule of
        :meth:`~segrenorm.data.slice_cache.SliceCache.context_rows` (the rule training used).

        Args:
            k: slices per stack, odd (the translator's ``context_slices``).

        Returns:
            (N, k, H, W) float32 in [-1, 1], row-aligned with :attr:`source`; channel
            ``k // 2`` is ``source.images``.

        Raises:
            ConfigError: an even or non-positive ``k``.
        """
        if k == 1:
            return self.source.images[:, None]
        rows = self.cache.context_rows(self.source.site, self.source.rows, k)  # (N, k)
        stacks = np.asarray(self.cache.images(self.source.site)[rows.reshape(-1)], np.float32)
        return stacks.reshape(*rows.shape, *stacks.shape[1:])

    def train_slices(self, site: str) -> tuple[np.ndarray, np.ndarray]:
        """Training images and labels of a site (``"source"`` or ``"target"``).

        Args:
            site: ``"source"`` or ``"target"``.
        """
        key = {"source": source_site(self.direction), "target": target_site(self.direction)}.get(
            site
        )
        if key is None:
            raise ConfigError(f"site {site!r} is unknown: use source or target")
        rows = self.cache.rows(key, "train", self.fold)
        if rows.size == 0:
            raise CacheError(f"{self.cache.path}: site {key} has no training slices")
        images = np.asarray(self.cache.images(key)[rows], dtype=np.float32)
        return images, np.asarray(self.cache.labels(key)[rows], dtype=np.uint8)

    def paired_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Positions of (source, target) test slices of the same subject and slice index.

        On simulated benchmarks the held-out subjects exist on both scanners; elsewhere
        there are no pairs and both arrays are empty.
        """
        where = {
            (str(s), int(i)): k
            for k, (s, i) in enumerate(zip(self.target.subjects, self.target.index, strict=True))
        }
        src, tgt = [], []
        for k, key in enumerate(zip(self.source.subjects, self.source.index, strict=True)):
            match = where.get((str(key[0]), int(key[1])))
            if match is not None:
                src.append(k)
                tgt.append(match)
        return np.asarray(src, dtype=np.int64), np.asarray(tgt, dtype=np.int64)


def slices_from_volumes(
    data: EvalData,
    folder: str | Path,
    *,
    on_subject: SubjectCallback | None = None,
) -> np.ndarray:
    """Harmonized source volumes in ``folder``, cut into slices aligned with ``data.source``.

    Each held-out source subject's harmonized volume must carry its input's file name
    (what ``segrenorm harmonize`` writes).

    Args:
        data: the evaluation data.
        folder: the harmonized volumes.
        on_subject: progress callback.

    Returns:
        (N, H, W) float32 in [-1, 1], row-aligned with ``data.source``; background -1 (OCT:
        the harmonized background, scaled like the retina; padding -1).

    Raises:
        InputError: the folder is missing, a subject's harmonized volume is missing, or it
            is not on its source volume's grid.
    """
    from segrenorm.data.slicing import SliceRecipe
    from segrenorm.volumes.bias import NO_BIAS_CORRECTION
    from segrenorm.volumes.readwrite import load_image
    from segrenorm.volumes.spatial import pad_to_shape

    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"harmonized folder {root} does not exist: run segrenorm harmonize first")
    manifest = data.cache.manifest
    entries = data.subject_entries(data.source)
    # Harmonized volumes are outputs, already in the target's corrected units: cut them with
    # the cache's recipe but never bias-correct them again (only inputs are corrected).
    recipe = dataclasses.replace(SliceRecipe.from_manifest(manifest), bias=NO_BIAS_CORRECTION)
    out = np.full(data.source.images.shape, -1.0, dtype=np.float32)
    groups = data.source.subject_rows()
    for count, (subject, positions) in enumerate(groups.items()):
        if on_subject is not None:
            on_subject(count, len(groups), subject)
        entry = entries[subject]
        original = Path(entry["image"])
        path = root / original.name
        if not path.is_file():
            raise InputError(
                f"{path}: no harmonized volume for held-out subject {subject} (from "
                f"{original}); harmonize every test subject of site {data.source.name} into "
                f"{root}"
            )
        harmonized, source = load_image(path), load_image(original)
        if not harmonized.geometry.matches(source.geometry):
            raise InputError(
                f"{path}: its grid {harmonized.geometry.shape} differs from its source "
                f"{original} {source.geometry.shape}; harmonized volumes must keep the input grid"
            )
        volume, reference = recipe.to_grid(harmonized), recipe.to_grid(source)
        scaled = recipe.scale(volume.data, mask_of=reference.data).scaled
        cut = recipe.cut(scaled)[data.source.index[positions]]
        out[positions] = pad_to_shape(cut, data.cache.slice_shape, -1.0)[0]
    return out


def recut_source(
    data: EvalData,
    recipe: SliceRecipe,
    *,
    on_subject: SubjectCallback | None = None,
) -> np.ndarray:
    """The source subjects' own volumes cut again with ``recipe``, aligned with ``data.source``.

    A baseline that needs another preparation of its inputs (e.g. N4 bias correction on a
    cache prepared without it) reads each source subject's volume from the manifest's path
    and cuts it like ``segrenorm prepare`` did, with ``recipe`` in place of the cache's.

    Args:
        data: the evaluation data.
        recipe: a :class:`~segrenorm.data.slicing.SliceRecipe` on the cache's grid (its axis,
            spacing and padding), e.g. the cache's with another ``bias``.
        on_subject: progress callback.

    Returns:
        (N, H, W) float32 in [-1, 1], row-aligned with ``data.source``; background -1.

    Raises:
        InputError: a source volume named by the manifest is missing, or does not cut into
            the cache's rows (its slice count or plane differs from the cache's).
    """
    from segrenorm.volumes.readwrite import load_image
    from segrenorm.volumes.spatial import pad_to_shape

    entries = data.subject_entries(data.source)
    out = np.full(data.source.images.shape, -1.0, dtype=np.float32)
    groups = data.source.subject_rows()
    for count, (subject, positions) in enumerate(groups.items()):
        if on_subject is not None:
            on_subject(count, len(groups), subject)
        path = Path(entries[subject]["image"])
        if not path.is_file():
            raise InputError(
                f"{path}: the source volume of subject {subject} is missing, so it cannot be "
                "prepared again (e.g. bias-corrected); restore it or re-run segrenorm prepare"
            )
        image = recipe.to_grid(load_image(path))
        cut = recipe.cut(recipe.scale(image.data, spacing=image.geometry.spacing).scaled)
        rows = data.source.index[positions]
        height, width = data.cache.slice_shape
        if rows.max() >= len(cut) or cut.shape[1] > height or cut.shape[2] > width:
            raise InputError(
                f"{path}: cut again it gives {cut.shape[0]} slices of {cut.shape[1:]}, not the "
                f"cache's slices of at most {data.cache.slice_shape}; the volume changed since "
                "segrenorm prepare"
            )
        out[positions] = pad_to_shape(cut[rows], data.cache.slice_shape, -1.0)[0]
    return out
