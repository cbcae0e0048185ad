"""Structured artefacts (stripes) in the non-retina background of OCT B-scans.

The paper notes that learned baselines hallucinate stripe artefacts in the background of
harmonized B-scans (its Fig. 7). This lens measures them on every method's held-out source
slices and on the target scanner's own held-out slices, on the cache's ``[-1, 1]`` scale
(an OCT cache keeps the background, clipped to ``[-1, 1]``, rather than setting it to -1).

**Definition**, per slice ``x`` of shape ``(H, W)`` (array rows index axis 0, columns axis 1;
in an OCT cache a slice is a B-scan ``(x, y)``: rows are A-scan positions, columns depths):

1. *Background* ``B``: pixels inside the image (not the cache's -1 padding: the unpadded
   extent comes from the subject's grid ``shape`` in the manifest, or, without one, from the
   rows and columns of the source slice that are not all exactly -1) and outside the retina
   mask dilated by ``margin`` pixels (a square of side ``2 margin + 1``, so the retina's
   blurred edges are not counted). A method's slices are measured in the *source* slice's
   background; the target's slices in their own.
2. *Column profile* ``p_j``: the mean of ``x`` over the ``n_j`` background pixels of column
   ``j``. Columns with fewer than ``min_pixels`` background pixels are left out (set to the
   profile's trend); the profile spans the first to the last column kept, ``L`` columns of
   which ``L_v`` are kept. ``q`` is ``p`` less its least-squares line over the kept columns
   (its mean and tilt: a tilted retina would otherwise leak into every frequency).
3. *Power above the cut-off*: ``E = sum_k w_k |Q_k|^2 / (L L_v)`` over the rfft bins ``k``
   of ``q`` with period ``L / k`` shorter than ``max_period`` pixels (DC and slow trends such
   as the retina's curvature excluded), ``w_k = 2`` for bins with a mirror image and 1 for
   the Nyquist bin. By Parseval a stripe ``a sin(2 pi j / P)`` with ``P < max_period`` gives
   ``E = a^2 / 2``.
4. *White-noise floor*: white speckle of variance ``s_j^2`` gives profile samples of
   variance ``s_j^2 / n_j`` and, in expectation, ``F = (m / L) mean_j(s_j^2 / n_j)``, ``m =
   sum w_k`` over the kept bins. ``s_j^2`` is half the mean squared difference of adjacent
   background pixels along column ``j`` (the slice's pooled value for a column without such
   pairs): a stripe constant along the column cancels in those differences, slow anatomy
   nearly so.
5. *Column-stripe energy* ``max(0, E - F)``; the *row-stripe energy* is the same on the
   transposed slice (row profiles, means over each row's background pixels). In an OCT
   B-scan the row energy measures stripes along A-scans (the vertical stripes of a B-scan
   drawn depth-down), the column energy bands at constant depth.

Per method: mean ± std over slices of both energies and of their sum (``total``), and each
mean's ratio to the target's (1: as much structure as the target scanner's own background,
the issue's target is at most 1). Speckle correlated over a few pixels lies above the white
floor, so no scan scores exactly 0: compare ratios, not absolute values.

Example:
    >>> stripes = 0.1 * np.sin(2 * np.pi * np.arange(64) / 8)  # amplitude 0.1, period 8
    >>> x = np.tile(stripes, (64, 1))  # the same in every row: column stripes
    >>> column, row = stripe_energy(x, np.ones((64, 64), bool))
    >>> round(column, 3), round(row, 3)  # 0.1 ** 2 / 2
    (0.005, 0.0)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.data import EvalData, SiteSlices
from segrenorm.volumes.spatial import resolve_slice_axis

__all__ = [
    "OCT",
    "ArtefactSettings",
    "artefact_lens",
    "background_masks",
    "cache_modality",
    "image_extent",
    "stripe_energy",
]

#: The manifest's ``modality`` of an OCT cache (absent: ``"mri"``).
OCT = "oct"
#: The energies reported per slice, in report order.
ENERGIES = ("column", "row", "total")


def cache_modality(manifest: Mapping[str, Any]) -> str:
    """The cache's modality: ``manifest["modality"]``, ``"mri"`` for caches without one.

    Args:
        manifest: a cache's ``manifest.json``.
    """
    return str(manifest.get("modality", "mri"))


@dataclass(frozen=True)
class ArtefactSettings:
    """How the background and its stripes are found (see the module docstring).

    Args:
        margin: pixels the retina mask is dilated by before its complement is background.
        max_period: longest stripe period counted, in pixels; slower variation is a trend.
        min_pixels: background pixels a row or column needs to enter its profile.

    Raises:
        ConfigError: a negative margin, a period not above 2 pixels or ``min_pixels`` < 2.
    """

    margin: int = 4
    max_period: float = 16.0
    min_pixels: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.margin, bool) or not isinstance(self.margin, int) or self.margin < 0:
            raise ConfigError(
                f"artefact margin={self.margin!r} must be an integer >= 0: the pixels the "
                "retina mask is dilated by"
            )
        if not self.max_period > 2.0:
            raise ConfigError(
                f"artefact max_period={self.max_period!r} must be above 2 pixels (the shortest "
                "period a profile holds); 16 counts stripes of up to 16 pixels"
            )
        if self.min_pixels < 2:
            raise ConfigError(
                f"artefact min_pixels={self.min_pixels!r} must be at least 2 background pixels "
                "per row or column"
            )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return asdict(self)


def _profile_energy(x: np.ndarray, background: np.ndarray, settings: ArtefactSettings) -> float:
    """Structured energy of the column profile of ``x`` over ``background`` (step 2 to 5)."""
    counts = background.sum(axis=0)  # (W,) background pixels per column
    kept = np.flatnonzero(counts >= settings.min_pixels)
    if kept.size < 2:
        return float("nan")
    span = slice(int(kept[0]), int(kept[-1]) + 1)
    x, background, counts = x[:, span], background[:, span], counts[span]
    valid = counts >= settings.min_pixels
    sums = np.where(background, x, 0.0).sum(axis=0)
    profile = np.where(valid, sums / np.maximum(counts, 1), 0.0)
    # The least-squares line over the kept columns goes: a tilt (a sloping retina) is a trend,
    # and its jump at the ends of the span would otherwise leak into every bin.
    where = np.flatnonzero(valid).astype(np.float64)
    slope, offset = np.polyfit(where, profile[valid], 1)
    q = np.where(valid, profile - (offset + slope * np.arange(profile.size)), 0.0)
    length, n_valid = q.size, int(valid.sum())
    k = np.arange(length // 2 + 1)
    weights = np.where((k == 0) | (2 * k == length), 1.0, 2.0)
    # Bins whose period length / k is shorter than max_period; k = 0 (DC) never qualifies.
    above = k * settings.max_period > length
    if not above.any():
        return float("nan")
    power = np.abs(np.fft.rfft(q)) ** 2
    energy = float((weights * power)[above].sum()) / (length * n_valid)
    # Half the mean squared difference of vertical neighbours inside the background.
    pairs = background[1:] & background[:-1]
    diff2 = np.where(pairs, (x[1:] - x[:-1]) ** 2, 0.0)
    n_pairs = pairs.sum(axis=0)
    pooled = float(diff2.sum()) / (2 * max(int(n_pairs.sum()), 1))
    var = np.where(n_pairs > 0, diff2.sum(axis=0) / (2 * np.maximum(n_pairs, 1)), pooled)
    floor = float(weights[above].sum()) / length * float(np.mean(var[valid] / counts[valid]))
    return max(0.0, energy - floor)


def stripe_energy(
    image: np.ndarray, background: np.ndarray, settings: ArtefactSettings | None = None
) -> tuple[float, float]:
    """The column- and row-stripe energies of one slice's background.

    Args:
        image: (H, W) slice on the cache's [-1, 1] scale.
        background: (H, W) bool, the pixels measured (:func:`background_masks`).
        settings: the cut-offs (defaults: :class:`ArtefactSettings`).

    Returns:
        ``(column, row)`` energies in squared intensity units; NaN for a direction with fewer
        than two rows or columns of enough background, or too short for any bin above the
        cut-off.

    Raises:
        InputError: an image and background of different shapes, or not 2-D.
    """
    settings = settings or ArtefactSettings()
    if image.ndim != 2 or image.shape != background.shape:
        raise InputError(
            f"stripe_energy needs one (H, W) slice and a background mask of its shape, got "
            f"{image.shape} and {background.shape}"
        )
    x, bg = image.astype(np.float64), background.astype(bool)
    return _profile_energy(x, bg, settings), _profile_energy(x.T, bg.T, settings)


def image_extent(data: EvalData, part: SiteSlices) -> np.ndarray:
    """Which pixels of each of ``part``'s slices are image rather than the cache's padding.

    The cache pads each subject's slices symmetrically (the extra pixel after) to its slice
    shape; the subject's grid ``shape`` in the manifest says by how much. A subject without
    one (a hand-made cache) gets the bounding box of the rows and columns of each slice that
    are not all exactly -1.

    Args:
        data: the evaluation data.
        part: ``data.source`` or ``data.target``.

    Returns:
        (N, H, W) bool, row-aligned with ``part``.
    """
    manifest = data.cache.manifest
    height, width = part.images.shape[1:]
    axis = resolve_slice_axis(str(manifest["slice_axis"]))
    entries = data.subject_entries(part)
    inside = np.zeros(part.images.shape, dtype=bool)
    for subject, positions in part.subject_rows().items():
        shape = entries.get(subject, {}).get("shape")
        plane = None if shape is None else [int(n) for k, n in enumerate(shape) if k != axis]
        if plane is not None and plane[0] <= height and plane[1] <= width:
            top, left = (height - plane[0]) // 2, (width - plane[1]) // 2
            inside[positions, top : top + plane[0], left : left + plane[1]] = True
            continue
        for p in positions:
            image = part.images[p] != -1.0
            rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
            if rows.size:
                inside[p, rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    return inside


def background_masks(masks: np.ndarray, inside: np.ndarray, margin: int) -> np.ndarray:
    """The measured background: inside the image and outside the dilated retina.

    Args:
        masks: (N, H, W) bool retina (the cache's foreground).
        inside: (N, H, W) bool image extent (:func:`image_extent`).
        margin: pixels the retina is dilated by, in-plane.

    Returns:
        (N, H, W) bool.
    """
    retina = masks.astype(bool)
    if margin > 0 and retina.any():
        square = np.ones((1, 3, 3), dtype=bool)  # in-plane only: slices are independent
        retina = ndimage.binary_dilation(retina, structure=square, iterations=margin)
    return inside.astype(bool) & ~retina


def _energies(
    images: np.ndarray, background: np.ndarray, settings: ArtefactSettings
) -> dict[str, np.ndarray]:
    pairs = [stripe_energy(x, b, settings) for x, b in zip(images, background, strict=True)]
    column, row = (np.asarray(v, dtype=np.float64) for v in zip(*pairs, strict=True))
    return {"column": column, "row": row, "total": column + row}


def _summary(per_slice: Mapping[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ENERGIES:
        values = per_slice[name][np.isfinite(per_slice[name])]
        out[f"{name}_mean"] = float(values.mean()) if values.size else float("nan")
        out[f"{name}_std"] = float(values.std()) if values.size else float("nan")
    out["n_slices"] = int(np.isfinite(per_slice["total"]).sum())
    return out


def artefact_lens(
    data: EvalData,
    slices: Mapping[str, np.ndarray],
    settings: ArtefactSettings | None = None,
) -> dict[str, Any]:
    """Background stripe energies of every method and of the target's held-out slices.

    Args:
        data: the held-out slices of both sites.
        slices: method name -> harmonized source slices, row-aligned with ``data.source``.
        settings: the background and cut-offs (defaults: :class:`ArtefactSettings`).

    Returns:
        JSON-ready: ``settings``; ``target`` with ``column_mean``, ``column_std``,
        ``row_mean``, ``row_std``, ``total_mean``, ``total_std`` and ``n_slices`` (the slices
        with a background to measure); ``methods``: the same per method plus
        ``column_ratio``, ``row_ratio`` and ``total_ratio``, each mean over the target's, and
        ``blank_background``: True (energies NaN) for slices whose background is all -1
        where the source's is not (a translation kept inside the retina only).

    Raises:
        InputError: a method's slices do not match the held-out source slices.
    """
    settings = settings or ArtefactSettings()
    source_bg = background_masks(
        data.source.masks, image_extent(data, data.source), settings.margin
    )
    target_bg = background_masks(
        data.target.masks, image_extent(data, data.target), settings.margin
    )
    target = _summary(_energies(data.target.images, target_bg, settings))
    methods: dict[str, Any] = {}
    for name, images in slices.items():
        if images.shape != data.source.images.shape:
            raise InputError(
                f"method {name!r}: slices {images.shape} do not match the "
                f"{data.source.images.shape} held-out source slices"
            )
        # A background set to -1 (slices cut to the retina) has no stripes to measure: say
        # so rather than score it as perfectly clean.
        blank = bool(source_bg.any() and np.all(images[source_bg] == -1.0))
        blank &= not np.all(data.source.images[source_bg] == -1.0)
        nan = np.full(len(images), np.nan)
        per_slice = dict.fromkeys(ENERGIES, nan) if blank else None
        scores = _summary(per_slice or _energies(images, source_bg, settings))
        scores["blank_background"] = blank
        for energy in ENERGIES:
            reference = target[f"{energy}_mean"]
            value = scores[f"{energy}_mean"]
            scores[f"{energy}_ratio"] = float(value / reference) if reference > 0 else float("nan")
        methods[name] = scores
    return {"settings": settings.to_dict(), "target": target, "methods": methods}
