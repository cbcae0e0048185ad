"""Unpaired two-domain slice dataset over a slice cache: crops, labels, semantic dropout.

The cache is read only through :class:`~segrenorm.data.slice_cache.SliceCache`; batches come from
:func:`~segrenorm.data.batches.infinite_loader`.

Example:
    >>> cache = SliceCache.open("cache/")  # doctest: +SKIP
    >>> data = UnpairedSliceDataset(cache, crop_size=64, semantic_dropout=0.5)  # doctest: +SKIP
    >>> stream = infinite_loader(data, batch_size=4, seed=1)  # doctest: +SKIP
    >>> batch = next(stream)  # batch["a"]: (4, 1, 64, 64) in [-1, 1]  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from segrenorm.data.context import check_context
from segrenorm.data.manifest import RUN_PREPARE
from segrenorm.data.slice_cache import SliceCache
from segrenorm.errors import CacheError, ConfigError
from segrenorm.vocabulary import check_direction, source_site, target_site

__all__ = ["UnpairedSliceDataset"]


class UnpairedSliceDataset(Dataset[dict[str, torch.Tensor]]):
    """Unpaired (source, target) slice crops with labels, for translation training.

    Sample ``i`` pairs source row ``i`` (or, with ``length`` set, row ``i`` of a per-epoch
    permutation, cycled) with a target row drawn independently at random, so the two sides
    are unpaired. Every random choice comes from ``np.random.default_rng((seed, epoch, i))``:
    a sample depends only on those three numbers, whatever the DataLoader worker count.

    Each side gets a ``crop_size`` square crop at a random position; with probability
    ``foreground_bias`` the crop is instead centred (with a jitter of ``crop_size // 8``) on
    a random labelled voxel, or a random mask voxel when the slice has no labels, and then
    clamped to the slice; ``crop_size=0`` takes the whole padded slice instead (whole-slice
    training, no position drawn). On the training split only, with probability
    ``semantic_dropout`` per side, a random non-empty subset of the foreground classes
    present in the crop is kept and the other classes' voxels become background: image -1,
    label 0, mask 0 (SemGAN's semantic dropout, applied to the image/label pair).

    With ``context_slices = k > 1`` (2.5-D input) the image is the row's k-slice context
    stack (:meth:`SliceCache.context_rows`), cropped at the same place; the crop position,
    the label, the mask and the semantic dropout's classes come from the centre slice, and
    a dropped class's voxels (of the centre slice) become -1 in every channel. ``k = 1``
    draws and returns exactly what the 2D dataset did.

    ``__getitem__`` returns, for ``s`` in ``a`` (source) and ``b`` (target) and ``c`` the crop
    size: ``s`` float32 (k, c, c) in [-1, 1]; ``s_label`` int64 (c, c); ``s_onehot`` float32
    (n_classes, c, c); ``s_mask`` float32 (1, c, c); ``s_row`` int64 scalar tensor (the row
    in the site's arrays; it batches to shape (B,)).

    Args:
        cache: an open :class:`SliceCache` or the path of a cache folder.
        split: ``"train"`` (the default, what training uses: never val or test subjects),
            ``"val"``, ``"test"`` or ``"all"`` (see :meth:`SliceCache.rows`).
        fold: ``None`` for the manifest's split, or the held-out fold for leave-one-out.
        crop_size: side of the square crops; at most the cached slice size. 0 returns
            whole padded slices (no crop; ``foreground_bias`` is then unused).
        foreground_bias: probability of centring a crop on foreground.
        semantic_dropout: per-side probability of semantic dropout (training split only).
        seed: non-negative base seed.
        length: samples per epoch; ``None`` means the number of source rows.
        direction: ``"AB"`` (site A is the source ``a``) or ``"BA"``.
        context_slices: slices per image (odd; 1 is 2D input).

    Raises:
        ConfigError: a value out of range, an even ``context_slices``, or a split/fold
            without rows on either site.
        CacheError: the cache cannot be opened.
    """

    def __init__(
        self,
        cache: SliceCache | str | Path,
        *,
        split: str = "train",
        fold: int | None = None,
        crop_size: int = 128,
        foreground_bias: float = 0.5,
        semantic_dropout: float = 0.0,
        seed: int = 0,
        length: int | None = None,
        direction: str = "AB",
        context_slices: int = 1,
    ) -> None:
        self.cache = cache if isinstance(cache, SliceCache) else SliceCache.open(cache)
        check_direction(direction)
        self.context_slices = check_context(context_slices)
        h, w = self.cache.slice_shape
        if isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size < 0:
            raise ConfigError(
                f"crop_size must be 0 (whole slices) or a positive integer, got {crop_size!r}"
            )
        if crop_size > min(h, w):
            raise ConfigError(
                f"crop_size {crop_size} is larger than the cached slice size {h}x{w} "
                f"in {self.cache.path}; use a crop_size of at most {min(h, w)}"
            )
        for name, p in (
            ("foreground_bias", foreground_bias),
            ("semantic_dropout", semantic_dropout),
        ):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {p!r}")
        if seed < 0:
            raise ConfigError(f"seed must be non-negative, got {seed}")
        if length is not None and length < 1:
            raise ConfigError(f"length must be a positive integer or None, got {length!r}")
        self.split, self.fold, self.direction = split, fold, direction
        self.crop_size, self.seed, self.length = crop_size, seed, length
        self.foreground_bias, self.semantic_dropout = (
            float(foreground_bias),
            float(semantic_dropout),
        )
        self.source, self.target = source_site(direction), target_site(direction)
        self.source_rows = self.cache.rows(self.source, split, fold)
        self.target_rows = self.cache.rows(self.target, split, fold)
        for site, rows in ((self.source, self.source_rows), (self.target, self.target_rows)):
            if rows.size == 0:
                raise ConfigError(
                    f"site {site} of {self.cache.path} has no rows in split {split!r} "
                    f"(fold={fold}); choose another split or fold"
                )
        self.epoch = 0
        self._order: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.length if self.length is not None else self.source_rows.size)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws ``__getitem__`` makes.

        Args:
            epoch: non-negative epoch number.
        """
        if epoch < 0:
            raise ConfigError(f"epoch must be non-negative, got {epoch}")
        self.epoch, self._order = int(epoch), None

    def _source_row(self, i: int) -> int:
        if self.length is None:
            return int(self.source_rows[i])
        if self._order is None:  # spread a fixed-length epoch over all rows, evenly
            rng = np.random.default_rng((self.seed, self.epoch))
            self._order = rng.permutation(self.source_rows.size)
        return int(self.source_rows[self._order[i % self.source_rows.size]])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} is out of range for a dataset of {len(self)}")
        # Independent child streams: the b side never depends on what the a side drew.
        rng_a, rng_b = np.random.default_rng((self.seed, self.epoch, i)).spawn(2)
        b_row = int(self.target_rows[rng_b.integers(self.target_rows.size)])
        sample = self._side("a", self.source, self._source_row(i), rng_a)
        sample.update(self._side("b", self.target, b_row, rng_b))
        return sample

    def _crop_origin(self, site: str, row: int, rng: np.random.Generator) -> tuple[int, int]:
        (h, w), c = self.cache.slice_shape, self.crop_size
        if rng.random() < self.foreground_bias:
            voxels = np.flatnonzero(self.cache.labels(site)[row])
            if voxels.size == 0:
                voxels = np.flatnonzero(self.cache.masks(site)[row])
            if voxels.size:
                y, x = divmod(int(voxels[rng.integers(voxels.size)]), w)
                jitter = rng.integers(-(c // 8), c // 8 + 1, size=2)
                top = int(np.clip(y + jitter[0] - c // 2, 0, h - c))
                left = int(np.clip(x + jitter[1] - c // 2, 0, w - c))
                return top, left
        return int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))

    def _side(
        self, key: str, site: str, row: int, rng: np.random.Generator
    ) -> dict[str, torch.Tensor]:
        if self.crop_size == 0:  # whole padded slices: no crop, no position drawn
            window: tuple[int, slice, slice] = (row, slice(None), slice(None))
        else:
            top, left = self._crop_origin(site, row, rng)
            window = (row, slice(top, top + self.crop_size), slice(left, left + self.crop_size))
        if self.context_slices == 1:
            pixels = self.cache.images(site)[window][None]  # (1, c, c)
        else:
            stack = self.cache.context_rows(site, row, self.context_slices)  # (k,)
            pixels = self.cache.images(site)[(stack, *window[1:])]  # (k, c, c)
        image = np.clip(np.array(pixels, dtype=np.float32), -1.0, 1.0)
        label = np.array(self.cache.labels(site)[window], dtype=np.int64)
        mask = np.array(self.cache.masks(site)[window] > 0, dtype=np.float32)
        n = self.cache.n_classes
        if label.size and int(label.max()) >= n:
            raise CacheError(
                f"{self.cache.path / self.cache.folders[site] / 'labels.npy'} row {row} holds "
                f"label {int(label.max())} but the manifest declares {n} classes; {RUN_PREPARE}"
            )
        # Draw even when unused so the split does not shift later draws.
        if rng.random() < self.semantic_dropout and self.split == "train":
            present = np.unique(label[label > 0])
            if present.size > 1:
                keep = np.zeros(present.size, dtype=bool)
                while not keep.any():  # uniform over the non-empty subsets
                    keep = rng.random(present.size) < 0.5
                dropped = np.isin(label, present[~keep])
                image[:, dropped], label[dropped], mask[dropped] = -1.0, 0, 0.0
        onehot = (label[None] == np.arange(n)[:, None, None]).astype(np.float32)
        return {
            key: torch.from_numpy(image),  # (k, c, c)
            f"{key}_label": torch.from_numpy(label),  # (c, c)
            f"{key}_onehot": torch.from_numpy(onehot),  # (n_classes, c, c)
            f"{key}_mask": torch.from_numpy(mask)[None],  # (1, c, c)
            f"{key}_row": torch.tensor(row, dtype=torch.int64),
        }
