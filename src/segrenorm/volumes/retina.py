"""The retina of an OCT volume as a foreground mask, found from the intensities alone.

An OCT B-scan is a dark vitreous on top, a bright layered band (the retina from the inner
limiting membrane down to the retinal pigment epithelium, and the choroid under it), and a dark
background below. Fluid pockets inside the band are dark too, and multiplicative speckle makes
single voxels unreliable, so :func:`retina_mask` works on smoothed log intensities and on whole
A-scans:

1. log intensity (speckle becomes additive), smoothed in each B-scan with a Gaussian wider
   across A-scans than in depth (layers run laterally);
2. a threshold at Otsu's (:data:`_LEVEL` places it between the background's typical level
   and Otsu's; hyporeflective layers such as the ONL may fall below it, step 4 fills them);
3. in each B-scan, the suprathreshold components that are at least a fraction of the largest
   one (speckle blobs in the vitreous are dropped, both halves of a split band are kept);
4. per A-scan, every depth between the first kept sample and the last one that is bright
   relative to that A-scan's brightest depth (the RPE; this stops the band at the choroid's
   bottom when the sclera is brighter than the vitreous): the band with its dark layers and
   fluid pockets filled;
5. the band's top and bottom depths median-filtered over neighbouring A-scans, which removes
   spikes and bridges A-scans that a vessel shadow darkened; before that, bottoms far below
   the B-scan's smooth (quadratic, robustly fitted) bottom curve are set onto it: the
   choroid's bottom follows only the eye's curvature, not the domes a PED lifts, under which
   the sclera can look like band.

The result is used by :class:`~segrenorm.data.slicing.SliceRecipe` for ``modality="oct"``.

Example:
    >>> volume = np.full((16, 40, 2), 1.0)
    >>> volume[:, 15:25] = 50.0  # a bright band in depth (axis 1)
    >>> mask = retina_mask(volume)
    >>> bool(mask[:, 15:25].all()), bool(mask[:, :12].any() or mask[:, 28:].any())
    (True, False)
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from segrenorm.errors import ConfigError, InputError

__all__ = ["retina_mask"]

#: Where the threshold sits between the background's median and Otsu's threshold (0: at the
#: background, 1: Otsu). Otsu's own: on simulated Cirrus and Spectralis scans a lower level let
#: the speckled vitreous into the band, and dim layers that Otsu cuts are filled back by the
#: per-A-scan span of step 4 (the band is every depth between its first and last sample).
_LEVEL = 1.0
#: A component of a B-scan is kept when it has at least this fraction of the largest one's size.
_MIN_COMPONENT = 0.05
#: The band ends below the last depth brighter than this fraction of the way (log) from the
#: background to the A-scan's brightest depth (the RPE); the choroid is above it, the sclera not.
_DEEP = 0.65


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of ``values``: the histogram cut maximising between-class variance."""
    hist, edges = np.histogram(values, bins=bins)
    centers = 0.5 * (edges[:-1] + edges[1:])
    below = np.cumsum(hist).astype(np.float64)
    above = below[-1] - below
    mass = np.cumsum(hist * centers)
    mean_below = mass / np.maximum(below, 1.0)
    mean_above = (mass[-1] - mass) / np.maximum(above, 1.0)
    between = below * above * (mean_below - mean_above) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def _threshold(smoothed: np.ndarray) -> tuple[float, float]:
    """The band's threshold on smoothed log intensities (step 2 of the module docstring), and
    the background's typical level."""
    flat = smoothed.ravel()
    flat = flat[:: max(1, flat.size // 2_000_000)]  # a histogram needs a few million values
    otsu = _otsu(flat)
    background = float(np.median(flat[flat <= otsu]))
    return background + _LEVEL * (otsu - background), background


def _kept_components(above: np.ndarray) -> np.ndarray:
    """(X, Y) bool: the components of one B-scan worth keeping (step 3)."""
    labels, n = ndimage.label(above)
    if n <= 1:
        return above
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= _MIN_COMPONENT * sizes.max()
    keep[0] = False
    return np.asarray(keep[labels], dtype=bool)


def _lateral_median(depths: np.ndarray, window: int) -> np.ndarray:
    """Median of each A-scan's depth over ``window`` neighbours along axis 0, ignoring NaN."""
    half = window // 2
    padded = np.pad(depths, ((half, half), (0, 0)), constant_values=np.nan)
    windows = np.lib.stride_tricks.sliding_window_view(padded, window, axis=0)  # (X, Z, window)
    with np.errstate(all="ignore"):
        counts = np.sum(~np.isnan(windows), axis=-1)
        out = np.full(depths.shape, np.nan)
        have = counts > 0
        out[have] = np.nanmedian(windows[have], axis=-1)
    return out


#: Fit of the band's bottom across a B-scan: polynomial degree (the eye's curvature and tilt),
#: trimming rounds, the share of A-scans each round keeps (those nearest the fit), and how far
#: below the final fit (in robust spreads, and at least in voxels) a bottom must lie to be
#: replaced.
_BOTTOM_DEGREE, _BOTTOM_ROUNDS, _BOTTOM_KEEP = 2, 6, 0.6
_BOTTOM_SPREADS, _BOTTOM_MIN_VOXELS = 3.0, 3.0


def _clip_deep_bottoms(bottom: np.ndarray) -> np.ndarray:
    """(X, Z) band bottoms with those far below their B-scan's smooth curve set onto it.

    Per B-scan, a quadratic in the A-scan position is fitted to the bottoms by trimmed least
    squares: the first fit is to the shallowest :data:`_BOTTOM_KEEP` share of the A-scans, each
    further round refits on the same share nearest the last fit, so up to 40% of A-scans that
    run deep (under a fluid dome) do not pull the curve (a plain least-squares start bends
    toward them and hides them in its own spread). Bottoms
    more than :data:`_BOTTOM_SPREADS` robust spreads (at least :data:`_BOTTOM_MIN_VOXELS`)
    below the curve are set onto it; bottoms above it are kept.
    """
    out = bottom.copy()
    x = np.arange(bottom.shape[0], dtype=np.float64)
    for z in range(bottom.shape[1]):
        have = ~np.isnan(bottom[:, z])
        if have.sum() <= 2 * (_BOTTOM_DEGREE + 1):
            continue
        # Start from the shallowest A-scans: the ones that run deep are what is looked for.
        keep = have & (bottom[:, z] <= np.quantile(bottom[have, z], _BOTTOM_KEEP))
        for _ in range(_BOTTOM_ROUNDS):
            fit = np.polyval(np.polyfit(x[keep], bottom[keep, z], _BOTTOM_DEGREE), x)
            distance = np.abs(bottom[:, z] - fit)
            keep = have & (distance <= np.quantile(distance[have], _BOTTOM_KEEP))
        fit = np.polyval(np.polyfit(x[keep], bottom[keep, z], _BOTTOM_DEGREE), x)
        residual = bottom[:, z] - fit
        spread = 1.4826 * float(np.median(np.abs(residual[keep])))
        deep = have & (residual > max(_BOTTOM_SPREADS * spread, _BOTTOM_MIN_VOXELS))
        out[deep, z] = fit[deep]
    return out


def retina_mask(
    data: np.ndarray,
    *,
    depth_axis: int = 1,
    sigma: tuple[float, float] = (4.0, 1.5),
    window: int = 9,
    where: str = "the OCT volume",
) -> np.ndarray:
    """The retina (with the choroid band under it) of an OCT volume, without labels.

    The vitreous above the band and the dark background below it are excluded; dark layers
    and fluid pockets inside the band are included (see the module docstring for the steps).

    Args:
        data: a 3D volume whose ``depth_axis`` is the A-scan depth (the vitreous at index 0);
            of the two other axes the first is the A-scan position within a B-scan and the
            second the B-scan index. A 2D array is one B-scan.
        depth_axis: which axis is depth (1 in the package's ``(x, y, z)`` OCT convention).
        sigma: Gaussian widths in voxels across A-scans and in depth.
        window: odd number of neighbouring A-scans the band's top and bottom are
            median-filtered over.
        where: what the volume is (a file name), for the message.

    Returns:
        A boolean array of ``data``'s shape.

    Raises:
        ConfigError: a depth axis outside the array, negative widths or an even or
            non-positive window.
        InputError: not a 2D or 3D array, non-finite intensities, or no band found.
    """
    arr = np.asarray(data, dtype=np.float64)
    if arr.ndim not in (2, 3):
        raise InputError(f"{where}: retina_mask needs a 2D or 3D array, got shape {arr.shape}")
    if not -arr.ndim <= depth_axis < arr.ndim:
        raise ConfigError(f"depth_axis {depth_axis} is not an axis of a {arr.ndim}D volume")
    if len(sigma) != 2 or any(not s >= 0 for s in sigma):
        raise ConfigError(f"sigma {sigma!r} must be two non-negative widths (lateral, depth)")
    if window < 1 or window % 2 == 0:
        raise ConfigError(f"window {window} must be a positive odd number of A-scans")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{where}: the OCT intensities hold NaN or infinite values")
    two_d = arr.ndim == 2
    work = np.moveaxis(arr[..., None] if two_d else arr, depth_axis % arr.ndim, 1)  # (X, Y, Z)
    low = float(work.min())
    span = float(np.percentile(work, 99.0)) - low
    if not span > 0:
        raise InputError(f"{where}: the OCT intensities are constant ({low:g}); no retina")
    # Log of the intensity above the floor: speckle is multiplicative, so this makes it additive
    # noise that the Gaussian averages out; the 1% offset keeps zeros finite.
    logs = np.log1p((work - low) / (0.01 * span))
    smoothed = ndimage.gaussian_filter(logs, sigma=(sigma[0], sigma[1], 0.0))
    cut, background = _threshold(smoothed)
    # The band ends where an A-scan falls below _DEEP of the way (in log) from the background
    # to its own brightest depth (the RPE): the sclera under the choroid can be brighter than
    # the vitreous, but not that bright. Relative to each A-scan, so a vessel shadow lowers it.
    deep = background + _DEEP * (smoothed.max(axis=1, keepdims=True) - background)  # (X, 1, Z)
    n_x, n_y, n_z = work.shape
    top = np.full((n_x, n_z), np.nan)
    bottom = np.full((n_x, n_z), np.nan)
    for z in range(n_z):
        kept = _kept_components(smoothed[:, :, z] > cut)  # (X, Y)
        has = kept.any(axis=1)
        top[has, z] = np.argmax(kept, axis=1)[has]
        bright = kept & (smoothed[:, :, z] > deep[:, :, z])
        has &= bright.any(axis=1)
        bottom[has, z] = (n_y - 1 - np.argmax(bright[:, ::-1], axis=1))[has]
        top[~has, z] = np.nan
    # The top (the ILM) follows every dome a PED or SRF lifts: a narrow median. The bottom
    # (the choroid's) does not move with them (a PED lifts the RPE off Bruch's membrane, not
    # the choroid) and follows the eye's curvature only, while under a dome the A-scan's
    # brightest depth changes and the sclera can pass as band: bottoms far below the B-scan's
    # smooth curve are replaced by it (:func:`_clip_deep_bottoms`).
    top = _lateral_median(top, window)
    bottom = _lateral_median(_clip_deep_bottoms(bottom), window)
    depth = np.arange(n_y)[None, :, None]
    found = ~np.isnan(top)
    upper = np.where(found, np.rint(top), n_y)[:, None, :]
    lower = np.where(found, np.rint(bottom), -1)[:, None, :]
    mask = (depth >= upper) & (depth <= lower)  # (X, Y, Z)
    if not mask.any():
        raise InputError(
            f"{where}: no retina found (no bright band in depth above the threshold {cut:.3g} "
            "of the smoothed log intensity); is it an OCT volume with depth along axis "
            f"{depth_axis}?"
        )
    mask = np.moveaxis(mask, 1, depth_axis % arr.ndim)
    return np.ascontiguousarray(mask[..., 0] if two_d else mask)
