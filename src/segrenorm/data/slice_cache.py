"""The slice cache, read side: a read-only, memory-mapped view of a prepared cache.

The layout is fixed in ``docs/cache-format.md``; :func:`segrenorm.data.prepare.prepare_cache`
writes it and ``segrenorm.data.manifest`` validates its ``manifest.json``. This module reads a
cache only through that manifest and ``numpy.load(..., mmap_mode="r")``, and imports neither
torch nor the preprocessing code.

A cache of more than two sites is read as a *pair view*: ``SliceCache.open(path,
pair=(source, target))`` shows the two named sites as ``"A"`` (source) and ``"B"`` (target),
with a projected manifest holding only their subjects, so that training, evaluation and
checkpoints keep their two-site vocabulary while the arrays are read from the sites' own
folders.

Example:
    >>> cache = SliceCache.open("cache/")  # doctest: +SKIP
    >>> cache.images("A").shape  # (N, H, W) float32 in [-1, 1]  # doctest: +SKIP
    >>> pair = SliceCache.open("cache/", pair=("IOP", "Guys"))  # doctest: +SKIP
    >>> pair.site_names  # doctest: +SKIP
    ('IOP', 'Guys')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from segrenorm.data.context import check_context, context_positions
from segrenorm.data.manifest import RUN_PREPARE, SPLITS, check_fields, open_manifest
from segrenorm.data.pairs import TRAIN_CHOICE, choose_pair, project_manifest
from segrenorm.errors import CacheError, ConfigError
from segrenorm.vocabulary import SITES

__all__ = ["SliceCache"]


def _check_site(site: str) -> str:
    if site not in SITES:
        raise ConfigError(f"unknown site {site!r}; expected one of {', '.join(SITES)}")
    return site


class SliceCache:
    """Read-only view of a slice cache built by ``segrenorm prepare``.

    Arrays are memory-mapped lazily and per process, so a pickled cache (as sent to
    DataLoader workers) carries only its path and manifest, and every worker maps its own.

    Args:
        path: the cache folder.
        manifest: its validated ``manifest.json`` (for a pair view, the projected one). Use
            :meth:`open` rather than the constructor.
        folders: the site folder read for ``A`` and ``B`` (default ``A/`` and ``B/``).
    """

    def __init__(
        self, path: Path, manifest: dict[str, Any], folders: Mapping[str, str] | None = None
    ) -> None:
        self.path = path
        self._manifest = manifest
        self._folders = {site: str((folders or {}).get(site, site)) for site in SITES}
        # Per site: subject indices in row order and their first rows, for row -> subject.
        self._owners: dict[str, list[int]] = {}
        self._starts: dict[str, np.ndarray] = {}
        self._n_rows: dict[str, int] = {}
        for site in SITES:
            owners = [k for k, s in enumerate(manifest["subjects"]) if s["site"] == site]
            starts = [int(manifest["subjects"][k]["first_row"]) for k in owners]
            self._owners[site], self._starts[site] = owners, np.asarray(starts, dtype=np.int64)
            self._n_rows[site] = sum(int(manifest["subjects"][k]["n_slices"]) for k in owners)
        self._maps: dict[tuple[str, str], np.ndarray] = {}
        self._contexts: dict[tuple[str, int], np.ndarray] = {}
        self._pid = os.getpid()

    @classmethod
    def open(
        cls,
        path: str | Path,
        pair: tuple[str | None, str | None] | None = None,
        how_to_choose: str = TRAIN_CHOICE,
    ) -> SliceCache:
        """Open and validate a cache folder, or a pair of its sites.

        Args:
            path: folder holding ``manifest.json`` and one array folder per site key.
            pair: ``(source, target)`` site names (keys ``"A"``, ``"C"``, ... are accepted
                too) shown as sites ``A`` and ``B``; see
                :func:`~segrenorm.data.pairs.choose_pair`. None reads a two-site cache as it is.
            how_to_choose: the caller's flags for choosing the pair, for messages (default
                train's ``--set data.source=NAME --set data.target=NAME``).

        Raises:
            CacheError: the folder, manifest or arrays are missing or inconsistent; the
                message names the path and says to run ``segrenorm prepare``.
            ConfigError: a cache of more than two sites without a pair, an unknown site
                name, or the same site twice; the message lists the sites.
        """
        root = Path(path)
        manifest = open_manifest(root)
        check_fields(root, manifest)
        keys = choose_pair(root, manifest["sites"], pair, how_to_choose)
        if keys == SITES and len(manifest["sites"]) == 2:
            return cls(root, manifest)  # a two-site cache in its own order: as it is
        return cls(root, project_manifest(manifest, keys), dict(zip(SITES, keys, strict=True)))

    @property
    def manifest(self) -> dict[str, Any]:
        """The parsed ``manifest.json``; for a pair view, projected onto the pair: only its
        subjects, at site keys ``A`` and ``B``, with the folders read under ``"pair"``."""
        return self._manifest

    @property
    def folders(self) -> dict[str, str]:
        """The cache folder (site key) read for ``A`` and ``B``: ``{"A": "A", "B": "B"}``
        unless this is a pair view."""
        return dict(self._folders)

    @property
    def n_classes(self) -> int:
        """Number of segmentation classes, background included."""
        return int(self._manifest["n_classes"])

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names, background first."""
        return tuple(str(name) for name in self._manifest["class_names"])

    @property
    def sites(self) -> tuple[str, str]:
        """Site keys, always ``("A", "B")``."""
        return SITES

    @property
    def site_names(self) -> tuple[str, str]:
        """Human names of sites A and B (e.g. scanner names)."""
        names = self._manifest["sites"]
        return str(names["A"]), str(names["B"])

    @property
    def slice_shape(self) -> tuple[int, int]:
        """``(H, W)`` shared by every slice of both sites."""
        h, w = self._manifest["slice_shape"]
        return int(h), int(w)

    def n_rows(self, site: str) -> int:
        """Number of slices of ``site``.

        Args:
            site: ``"A"`` or ``"B"``.
        """
        return self._n_rows[_check_site(site)]

    def rows(self, site: str, split: str = "train", fold: int | None = None) -> np.ndarray:
        """Row indices of ``site`` belonging to a split, sorted.

        Args:
            site: ``"A"`` or ``"B"``.
            split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``. Training uses ``"train"``,
                tuning and checkpoint selection ``"val"``, the final table ``"test"``. A
                cache prepared without a val split (or before there was one) has no val rows.
            fold: ``None`` uses the manifest's subject-level train/val/test split. An integer
                selects leave-one-subject-out / k-fold: subjects whose ``fold`` equals it are
                the test set and every other subject of the site (val ones included) is the
                training set; there is no val split then.

        Raises:
            ConfigError: unknown site or split, a fold out of range, or ``"val"`` with a fold.
        """
        _check_site(site)
        if split not in SPLITS:
            raise ConfigError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        subjects = [s for s in self._manifest["subjects"] if s["site"] == site]
        if fold is not None and split == "val":
            raise ConfigError(
                f"split 'val' cannot be combined with fold {fold}: cross-validation folds have "
                "only train and test; use fold=None for the cache's val split"
            )
        if fold is not None:
            folds = sorted({int(s["fold"]) for s in self._manifest["subjects"]})
            declared = self._manifest.get("split", {}).get("n_folds", 0)
            n_folds = max(int(declared), folds[-1] + 1)
            if not 0 <= fold < n_folds:
                raise ConfigError(
                    f"fold {fold} is out of range: the cache {self.path} has folds 0..{n_folds - 1}"
                )
        chosen: list[np.ndarray] = []
        for s in subjects:
            if fold is None:
                member = split in ("all", s["split"])
            else:
                member = split == "all" or (s["fold"] == fold) == (split == "test")
            if member:
                chosen.append(np.arange(s["first_row"], s["first_row"] + s["n_slices"]))
        if not chosen:
            return np.zeros(0, dtype=np.int64)
        return np.sort(np.concatenate(chosen)).astype(np.int64)

    def subject_of(self, site: str, row: int) -> str:
        """Subject identifier owning ``row`` of ``site``.

        Args:
            site: ``"A"`` or ``"B"``.
            row: row index into the site's arrays.

        Raises:
            ConfigError: unknown site or a row out of range.
        """
        if not 0 <= row < self.n_rows(site):
            raise ConfigError(
                f"row {row} is out of range for site {site} ({self.n_rows(site)} rows)"
            )
        # Subjects with zero slices share a start; searchsorted 'right' picks the one holding rows.
        k = int(np.searchsorted(self._starts[site], row, side="right")) - 1
        return str(self._manifest["subjects"][self._owners[site][k]]["subject"])

    def subjects_of(self, site: str, rows: np.ndarray) -> np.ndarray:
        """Subject identifiers owning each of ``rows`` of ``site`` (object array of str).

        Args:
            site: ``"A"`` or ``"B"``.
            rows: row indices into the site's arrays.

        Raises:
            ConfigError: unknown site or a row out of range.
        """
        wanted = np.asarray(rows, dtype=np.int64)
        n = self.n_rows(site)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
            raise ConfigError(
                f"rows {wanted.min()}..{wanted.max()} are out of range for site {site} ({n} rows)"
            )
        owners = np.searchsorted(self._starts[site], wanted, side="right") - 1
        subjects = self._manifest["subjects"]
        names = [str(subjects[self._owners[site][k]]["subject"]) for k in owners.tolist()]
        return np.asarray(names, dtype=object)

    def context_rows(self, site: str, rows: np.ndarray | int, k: int) -> np.ndarray:
        """The rows of each row's k-slice context stack (2.5-D input), centre row in the middle.

        The neighbours of a row are the rows of the same subject at slice indices
        ``z - k//2 .. z + k//2`` (``slices.npy``); one the cache does not hold (skipped for
        too little foreground, or past the volume's edge) is replaced by the nearest held
        slice toward the centre (:func:`segrenorm.data.context.context_positions`).

        Args:
            site: ``"A"`` or ``"B"``.
            rows: row indices into the site's arrays (an int gives one stack).
            k: slices per stack, odd (``data.context_slices``).

        Returns:
            int64 rows of shape ``rows.shape + (k,)``; ``[..., k // 2]`` is ``rows``.

        Raises:
            ConfigError: an unknown site, an even or non-positive ``k``, or a row out of range.
            CacheError: ``slices.npy`` does not list a subject's slices in increasing order.
        """
        k, key = check_context(k), (_check_site(site), int(k))
        if key not in self._contexts:
            table = np.tile(np.arange(self.n_rows(site), dtype=np.int64)[:, None], (1, k))
            index = self.slices(site)
            for subject in self._owners[site]:
                entry = self._manifest["subjects"][subject]
                first, count = int(entry["first_row"]), int(entry["n_slices"])
                if count == 0:
                    continue
                try:
                    positions = context_positions(index[first : first + count, 1], k)
                except ConfigError as exc:
                    where = self.path / self._folders[site] / "slices.npy"
                    raise CacheError(
                        f"{where}, subject {entry['subject']}: {exc}; {RUN_PREPARE}"
                    ) from None
                table[first : first + count] = first + positions
            self._contexts[key] = table
        wanted = np.asarray(rows, dtype=np.int64)
        n = self.n_rows(site)
        if wanted.size and (wanted.min() < 0 or wanted.max() >= n):
            raise ConfigError(
                f"rows {wanted.min()}..{wanted.max()} are out of range for site {site} ({n} rows)"
            )
        return self._contexts[key][wanted]

    def _array(self, site: str, name: str) -> np.ndarray:
        if os.getpid() != self._pid:  # forked worker: do not share the parent's mappings
            self._maps, self._pid = {}, os.getpid()
        key = (_check_site(site), name)
        if key not in self._maps:
            folder = self._folders[site]
            self._maps[key] = np.load(self.path / folder / f"{name}.npy", mmap_mode="r")
        return self._maps[key]

    def images(self, site: str) -> np.ndarray:
        """Memory-mapped float32 images ``(N, H, W)`` of ``site``, in [-1, 1].

        Args:
            site: ``"A"`` or ``"B"``.
        """
        return self._array(site, "images")

    def slices(self, site: str) -> np.ndarray:
        """Memory-mapped int32 ``(N, 2)`` of ``site``: column 1 is each row's slice index in
        its canonical volume (column 0 indexes the whole cache's manifest: use
        :meth:`subjects_of` for a row's subject).

        Args:
            site: ``"A"`` or ``"B"``.
        """
        return self._array(site, "slices")

    def labels(self, site: str) -> np.ndarray:
        """Memory-mapped uint8 label maps ``(N, H, W)`` of ``site``.

        Args:
            site: ``"A"`` or ``"B"``.
        """
        return self._array(site, "labels")

    def masks(self, site: str) -> np.ndarray:
        """Memory-mapped uint8 foreground masks ``(N, H, W)`` of ``site``.

        Args:
            site: ``"A"`` or ``"B"``.
        """
        return self._array(site, "masks")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_maps"] = {}  # never pickle memmaps; the receiving process maps its own
        return state
