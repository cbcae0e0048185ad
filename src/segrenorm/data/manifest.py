"""The slice cache's manifest: format constants, and reading and validating ``manifest.json``.

The layout is fixed in ``docs/cache-format.md``: :func:`segrenorm.data.prepare.prepare_cache`
writes it and :class:`segrenorm.data.slice_cache.SliceCache` reads a cache through
:func:`open_manifest` and :func:`check_fields`. :func:`summarize` describes a cache in a few lines.

Example:
    >>> manifest = open_manifest("cache/")  # doctest: +SKIP
    >>> print(summarize(manifest, "cache/"))  # doctest: +SKIP
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from segrenorm.errors import CacheError, ConfigError
from segrenorm.vocabulary import ALL_SITE_KEYS, MODALITIES, site_keys
from segrenorm.volumes.bias import BiasCorrection

__all__ = [
    "ARRAY_DTYPES",
    "FORMAT_VERSION",
    "RUN_PREPARE",
    "SPLITS",
    "check_fields",
    "open_manifest",
    "summarize",
]

FORMAT_VERSION = 1
#: The splits :meth:`SliceCache.rows` selects: a subject's own split, or every subject.
SPLITS: tuple[str, ...] = ("train", "val", "test", "all")
#: The arrays of each site folder and their dtypes (shapes: ``docs/cache-format.md``).
ARRAY_DTYPES = {"images": "float32", "labels": "uint8", "masks": "uint8", "slices": "int32"}
#: What every cache error tells the user to do.
RUN_PREPARE = "re-run segrenorm prepare"


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype[Any]]:
    with path.open("rb") as fh:
        major, _minor = np.lib.format.read_magic(fh)
        read = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, _fortran, dtype = read(fh)
    return tuple(shape), dtype


def open_manifest(cache_dir: str | Path) -> dict[str, Any]:
    """Read and validate a cache's manifest, checking that its arrays exist with the right shapes.

    Args:
        cache_dir: a folder written by :func:`segrenorm.data.prepare.prepare_cache`.

    Returns:
        The manifest as a dict (see ``docs/cache-format.md``).

    Raises:
        CacheError: naming the cache and the problem, for a missing folder or manifest, an
            incomplete or unknown-version cache, an invalid bias correction or modality, or a
            missing or mis-shaped array.
    """
    root = Path(cache_dir)
    if not root.is_dir():
        raise CacheError(f"slice cache {root} does not exist; create it with segrenorm prepare")
    path = root / "manifest.json"
    if not path.is_file():
        raise CacheError(
            f"slice cache {root} has no manifest.json: it is incomplete or not a cache; "
            f"{RUN_PREPARE}"
        )
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheError(f"{path} is not valid JSON ({exc}); {RUN_PREPARE}") from exc
    if not isinstance(manifest, dict):
        raise CacheError(f"{path} does not hold a JSON object; {RUN_PREPARE}")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheError(
            f"slice cache {root} has format_version {manifest.get('format_version')!r}, this "
            f"segrenorm reads {FORMAT_VERSION}; {RUN_PREPARE}"
        )
    if manifest.get("complete") is not True:
        raise CacheError(
            f'slice cache {root} is incomplete ("complete" is not true); {RUN_PREPARE}'
        )
    required = ("sites", "n_classes", "slice_axis", "slice_shape", "subjects")
    missing = [k for k in required if k not in manifest]
    if missing:
        raise CacheError(f"{path} lacks {', '.join(missing)}; {RUN_PREPARE}")
    try:  # absent in caches from before bias correction: they read as method "none"
        BiasCorrection.from_dict(manifest.get("bias_correction"))
    except (ConfigError, TypeError) as exc:
        raise CacheError(f"{path}: invalid bias_correction ({exc}); {RUN_PREPARE}") from None
    modality = manifest.get("modality", "mri")  # absent in caches from before OCT: MRI
    if modality not in MODALITIES:
        raise CacheError(
            f"{path}: unknown modality {modality!r} (this segrenorm knows "
            f"{', '.join(MODALITIES)}); {RUN_PREPARE}"
        )
    try:
        height, width = (int(v) for v in manifest["slice_shape"])
        subjects = manifest["subjects"]
        keys = list(manifest["sites"])
        if not 2 <= len(keys) <= len(ALL_SITE_KEYS):
            raise CacheError(
                f"{path} names {len(keys)} site(s) {keys}; a cache holds 2 to "
                f"{len(ALL_SITE_KEYS)}; {RUN_PREPARE}"
            )
        if keys != list(site_keys(len(keys))):
            raise CacheError(
                f"{path} names sites {keys}, not the keys A, B, ... in order; {RUN_PREPARE}"
            )
        stray = sorted({str(s["site"]) for s in subjects} - set(keys))
        if stray:
            raise CacheError(f"{path}: subjects at unknown site key(s) {stray}; {RUN_PREPARE}")
        for key in keys:
            rows = [s for s in subjects if s["site"] == key]
            n_rows = sum(int(s["n_slices"]) for s in rows)
            starts = [int(s["first_row"]) for s in rows]
            expected_starts = np.cumsum([0] + [int(s["n_slices"]) for s in rows])[:-1].tolist()
            if starts != expected_starts:
                raise CacheError(
                    f"{path}: site {key} subjects' first_row values are not contiguous; "
                    f"{RUN_PREPARE}"
                )
            for name, dtype in ARRAY_DTYPES.items():
                array_path = root / key / f"{name}.npy"
                if not array_path.is_file():
                    raise CacheError(f"slice cache {root} lacks {key}/{name}.npy; {RUN_PREPARE}")
                want = (n_rows, 2) if name == "slices" else (n_rows, height, width)
                try:
                    shape, found = _npy_header(array_path)
                except (OSError, ValueError) as exc:
                    raise CacheError(
                        f"{array_path} is not a readable .npy file ({exc}); {RUN_PREPARE}"
                    ) from exc
                if shape != want or found != np.dtype(dtype):
                    raise CacheError(
                        f"{array_path} holds {found} {shape}, the manifest expects {dtype} {want}; "
                        f"{RUN_PREPARE}"
                    )
    except (KeyError, TypeError, ValueError) as exc:
        raise CacheError(f"{path} is malformed ({exc!r}); {RUN_PREPARE}") from exc
    return manifest


def check_fields(path: Path, manifest: dict[str, Any]) -> None:
    """Check the manifest fields a :class:`SliceCache` reads beyond what ``open_manifest`` checks.

    Args:
        path: the cache folder, for messages.
        manifest: a manifest returned by :func:`open_manifest`.

    Raises:
        CacheError: bad ``n_classes`` or ``class_names``, or a subject without a name, a
            train/val/test split or an integer fold.
    """
    where = path / "manifest.json"
    n_classes = manifest["n_classes"]
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise CacheError(f"{where}: 'n_classes' must be a positive integer, got {n_classes!r}")
    names = manifest.get("class_names")
    if not isinstance(names, list) or len(names) != n_classes:
        raise CacheError(f"{where}: 'class_names' must list {n_classes} names, got {names!r}")
    for k, subject in enumerate(manifest["subjects"]):
        if (
            not isinstance(subject.get("subject"), str)
            or subject.get("split") not in ("train", "val", "test")
            or isinstance(subject.get("fold"), bool)
            or not isinstance(subject.get("fold"), int)
        ):
            raise CacheError(
                f"{where}: subjects[{k}] needs a 'subject' name, a 'split' of train, val or test "
                f"and an integer 'fold'; {RUN_PREPARE}"
            )


def _grid_text(grid: dict[str, Any]) -> str:
    """The cache's one grid and where it came from (its manifest's ``"grid"``)."""
    size = "x".join(f"{float(s):.4g}" for s in grid["spacing"])
    if grid.get("from") == "target-median":
        return f", grid {size} mm (median voxel size of target site {grid.get('target')})"
    return f", grid {size} mm (given)"


def summarize(manifest: dict[str, Any], where: str) -> str:
    """A few lines describing a cache: slices per site and split, slice shape, classes, the
    bias correction and the scaling's headroom when there are, and the grid; an OCT cache and
    a pseudo-labelled site say so.

    The val split is listed only when the cache has val subjects (older caches have none).

    Args:
        manifest: a manifest as returned by ``open_manifest``.
        where: the cache folder, for the first line.
    """
    slices: Counter[tuple[str, str]] = Counter()
    subjects: Counter[tuple[str, str]] = Counter()
    for subject in manifest["subjects"]:
        slices[subject["site"], subject["split"]] += int(subject["n_slices"])
        subjects[subject["site"], subject["split"]] += 1
    height, width = manifest["slice_shape"]
    bias = BiasCorrection.from_dict(manifest.get("bias_correction"))
    headroom = float(manifest.get("headroom", 0.0))
    oct_note = "OCT (retina mask, background kept) " if manifest.get("modality") == "oct" else ""
    lines = [
        f"cache {where}: {oct_note}{manifest['slice_axis']} slices {height}x{width}, "
        f"{manifest['n_classes']} classes"
        + ("" if manifest["has_labels"] else " (no labels)")
        + (f", bias-corrected ({bias.method}, shrink {bias.shrink})" if bias.enabled else "")
        + (f", headroom {headroom:g}" if headroom > 0 else "")
        + (_grid_text(manifest["grid"]) if manifest.get("grid") else "")  # none in old caches
    ]
    has_val = any(subject["split"] == "val" for subject in manifest["subjects"])
    shown = ("train", "val", "test") if has_val else ("train", "test")
    for key, name in manifest["sites"].items():
        parts = [
            f"{split} {slices[key, split]} slices / {subjects[key, split]} subjects"
            for split in shown
        ]
        sources = {s.get("label_source") for s in manifest["subjects"] if s["site"] == key}
        pseudo = sorted(str(m) for m in sources - {"file", None})  # older caches have none
        if pseudo:
            parts.append(f"pseudo-labels ({', '.join(pseudo)}; pseudo_labels/{key}/)")
        lines.append(f"  {key} ({name}): " + ", ".join(parts))
    return "\n".join(lines)
