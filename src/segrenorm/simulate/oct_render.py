"""Rendering a rasterised retina on a virtual OCT device (:class:`OctVendor`).

The steps an SD-OCT device goes through, in order:

1. reflectivity per retinal region, integrated exactly over each voxel's depth extent (region
   boundaries are sub-voxel), mixed with the fluid's reflectivity by its partial volume
   (``I = (1 - f) * I_layers + f * fluid[class]``);
2. shadows below vessels (the share of each voxel below the vessel is multiplied by its
   transmission) and sensitivity roll-off with depth (``exp(-depth / rolloff_mm)`` from the top
   of the grid, the zero-delay line);
3. Gaussian point-spread blur (axial and lateral FWHM);
4. speckle: the intensity of a complex Gaussian field blurred by the amplitude PSF, so grains
   have the PSF's size, averaged over ``speckle_looks`` independent frames (Gamma(L, 1/L) on
   intensity: relative variance 1/L), independent between B-scans (B-scans lie further apart
   than the lateral PSF);
5. an additive noise floor, averaged over the same frames (Gamma(L, floor / L)); its mean varies
   with depth by ``stripe`` (horizontal fixed-pattern lines, the same on every scan of a vendor);
6. compression (logarithmic over a dynamic range in dB, or a power law) and quantisation.

Volumes are rendered a few B-scans at a time, so a full-size Cirrus volume needs a few hundred
MB beyond its inputs; the result does not depend on the chunking.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator

import numpy as np
from scipy import ndimage

from segrenorm.errors import ConfigError
from segrenorm.simulate.oct_vendors import OctVendor
from segrenorm.simulate.retina import LAYER_NAMES, RetinaVolume

__all__ = ["compress", "linear_intensity", "render_oct"]

_TRUNCATE = 3.0  # Gaussian kernels are cut at 3 sigma (radius int(3 sigma + 0.5) voxels)
_CHUNK_VOXELS = 1 << 22  # voxels of the B-scans rendered together


def _cumulative(depth: np.ndarray, bounds: np.ndarray, refl: tuple[float, ...]) -> np.ndarray:
    """Integral of the piecewise-constant reflectivity from the top down to ``depth`` (mm).

    A sum of ramps, one per boundary; ``depth`` and ``bounds[k]`` broadcast together.
    """
    total = refl[0] * depth
    for k in range(1, len(refl)):
        total = total + (refl[k] - refl[k - 1]) * np.maximum(depth - bounds[k - 1], 0.0)
    return total


def _layers(volume: RetinaVolume, vendor: OctVendor, z0: int, z1: int) -> np.ndarray:
    """Noise-free linear intensity of B-scans ``z0:z1`` before blur, float32 (X, Y, z1 - z0)."""
    n_x, n_depth, _ = volume.fluid_fraction.shape
    dy = vendor.spacing[1]
    refl = vendor.reflectivity
    bounds = np.clip(volume.boundaries[:, :, z0:z1].astype(np.float64), 0.0, n_depth * dy)
    n_b, n_z = bounds.shape[0], z1 - z0
    xs, zs = np.meshgrid(np.arange(n_x), np.arange(n_z), indexing="ij")
    # Voxels holding no boundary take their region's value: the region of voxel j is the number
    # of boundaries at or above its top edge, counted by marking where each boundary starts.
    starts = np.zeros((n_x, n_depth + 1, n_z), np.uint8)
    first = np.ceil(bounds / dy - 1e-9).astype(np.intp)  # first edge at or below the boundary
    for k in range(n_b):
        np.add.at(starts, (xs, first[k], zs), 1)
    region = np.cumsum(starts[:, :n_depth], axis=1, dtype=np.uint8)
    image = np.asarray(refl, np.float32)[region]
    # Voxels holding boundaries: the exact integral over their depth extent (float64, since
    # it is a difference of nearby cumulative values).
    cell = np.minimum(np.floor(bounds / dy).astype(np.intp), n_depth - 1)  # (K - 1, X, z)
    top = cell * dy
    value = _cumulative(top + dy, bounds[:, None], refl) - _cumulative(top, bounds[:, None], refl)
    image[xs[None], cell, zs[None]] = (value / dy).astype(np.float32)
    fraction = volume.fluid_fraction[:, :, z0:z1]
    wet = np.nonzero(fraction)
    if wet[0].size:
        table = np.array([0.0, *vendor.fluid], np.float32)
        classes = volume.fluid_class[:, :, z0:z1][wet]
        # Fluid replaces the tissue it displaces: for SRF and PED that is the region the
        # boundaries leave the pocket's gap in (the retina model lifts the layers above it, so
        # the gap is counted as RPE under SRF and as choroid under a PED), for IRF the layer
        # the cyst sits in (the voxel's own value). Replacing the voxel's mean instead would
        # leave the displaced band's brightness in partly filled voxels at a pocket's top.
        host = image[wet].copy()
        host[classes == 2] = refl[LAYER_NAMES.index("RPE")]
        host[classes == 3] = refl[LAYER_NAMES.index("choroid")]
        image[wet] += fraction[wet] * (table[classes] - host)
    depth_vessel = volume.vessel_depth[:, z0:z1]
    transmission = volume.vessel_transmission[:, z0:z1]
    edges = (np.arange(1, n_depth + 1) * dy).astype(np.float32)
    for x, z in zip(*np.nonzero(transmission < 1.0), strict=True):
        # Share of each voxel's depth extent below the vessel, attenuated by its transmission.
        below = np.clip((edges - depth_vessel[x, z]) / np.float32(dy), 0.0, 1.0)
        image[x, :, z] *= 1.0 - below * (1.0 - transmission[x, z])
    centres = (np.arange(n_depth) + 0.5) * dy
    image *= np.exp(-centres / vendor.rolloff_mm).astype(np.float32)[None, :, None]
    return image


def _speckle(shape: tuple[int, int], vendor: OctVendor, rng: np.random.Generator) -> np.ndarray:
    """Mean-1 speckle of one B-scan: Gamma(L, 1/L) marginals, grains of the PSF's size."""
    # |h|^2 of an amplitude PSF h with sigma s has sigma s / sqrt(2): blur the field by sqrt(2)x.
    sigma = [math.sqrt(2.0) * s for s in vendor.sigmas()[:2]]
    energy = 1.0  # sum of squared (wrapped) kernel weights: the blurred field's variance
    for n, s in zip(shape, sigma, strict=True):
        impulse = np.zeros(n)
        impulse[0] = 1.0
        if s > 0:
            impulse = ndimage.gaussian_filter1d(impulse, s, mode="wrap", truncate=_TRUNCATE)
        energy *= float(np.sum(impulse**2))
    total = np.zeros(shape, np.float32)
    for _ in range(vendor.speckle_looks):
        for _part in range(2):  # real and imaginary parts
            field = rng.standard_normal(shape, dtype=np.float32)
            field = ndimage.gaussian_filter(field, sigma, mode="wrap", truncate=_TRUNCATE)
            total += field * field
    total *= np.float32(1.0 / (2.0 * energy * vendor.speckle_looks))
    return total


def _noise_profile(vendor: OctVendor, n_depth: int) -> np.ndarray:
    """Mean noise floor per depth row: the same lines on every scan of one vendor."""
    pattern = np.random.default_rng(zlib.crc32(vendor.name.encode())).standard_normal(n_depth)
    return (vendor.noise_floor * np.maximum(1.0 + vendor.stripe * pattern, 0.0)).astype(np.float32)


def _linear_chunks(
    volume: RetinaVolume, vendor: OctVendor, rng: np.random.Generator
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Linear intensities (speckle and noise included) of consecutive B-scan chunks."""
    n_x, n_depth, n_z = volume.fluid_fraction.shape
    if (n_x, n_depth, n_z) != vendor.shape or volume.boundaries.shape[0] != len(LAYER_NAMES) - 1:
        raise ConfigError(
            f"OCT vendor {vendor.name!r}: the retina volume is {(n_x, n_depth, n_z)} with "
            f"{volume.boundaries.shape[0]} boundaries, the vendor's grid is {vendor.shape} "
            f"with {len(LAYER_NAMES) - 1}; rasterise the retina on the vendor's grid"
        )
    sigmas = vendor.sigmas()
    halo = int(_TRUNCATE * sigmas[2] + 0.5)  # neighbours the blur across B-scans reaches
    step = max(1, _CHUNK_VOXELS // (n_x * n_depth))
    floor = _noise_profile(vendor, n_depth)[None, :]  # (1, Y)
    for z0 in range(0, n_z, step):
        z1 = min(n_z, z0 + step)
        lo, hi = max(0, z0 - halo), min(n_z, z1 + halo)
        image = _layers(volume, vendor, lo, hi)
        if any(s > 0 for s in sigmas):
            # Halos make the chunked blur equal to the whole-volume one.
            image = ndimage.gaussian_filter(image, sigmas, mode="nearest", truncate=_TRUNCATE)
        image = np.ascontiguousarray(image[:, :, z0 - lo : z1 - lo])
        for z in range(z1 - z0):
            if vendor.speckle_looks:
                image[:, :, z] *= _speckle((n_x, n_depth), vendor, rng)
            if vendor.noise_floor:
                looks = max(vendor.speckle_looks, 1)  # averaged frames average the noise too
                noise = rng.standard_gamma(looks, size=(n_x, n_depth), dtype=np.float32)
                image[:, :, z] += noise * (floor / np.float32(looks))
        yield z0, z1, image


def linear_intensity(
    volume: RetinaVolume, vendor: OctVendor, rng: np.random.Generator
) -> np.ndarray:
    """The detected intensity before compression: steps 1-5 of the module docstring.

    Args:
        volume: The retina rasterised on ``vendor``'s grid.
        vendor: The device.
        rng: Random generator for speckle and noise.

    Returns:
        float32 (X, Y, Z) linear intensity (relative units).

    Raises:
        ConfigError: If the volume is not on the vendor's grid.
    """
    out = np.empty(vendor.shape, np.float32)
    for z0, z1, chunk in _linear_chunks(volume, vendor, rng):
        out[:, :, z0:z1] = chunk
    return out


def compress(intensity: np.ndarray, vendor: OctVendor) -> np.ndarray:
    """Compress and quantise linear intensity to the vendor's stored integer levels.

    Args:
        intensity: Linear intensity (any shape).
        vendor: The device (``gain``, ``compression``, ``levels``).

    Returns:
        float32 integers in ``[0, levels]``, same shape.
    """
    signal = np.clip(intensity * np.float32(vendor.gain), 0.0, 1.0)
    scaled: np.ndarray
    if vendor.compression == "log":
        with np.errstate(divide="ignore"):
            decibels = 10.0 * np.log10(signal)
        scaled = np.clip(1.0 + decibels / np.float32(vendor.dynamic_range_db), 0.0, 1.0)
    else:
        scaled = signal ** np.float32(vendor.power)
    return np.rint(scaled * np.float32(vendor.levels)).astype(np.float32)


def render_oct(volume: RetinaVolume, vendor: OctVendor, rng: np.random.Generator) -> np.ndarray:
    """Render a rasterised retina as this vendor's stored B-scan volume.

    Args:
        volume: The retina rasterised on ``vendor``'s grid
            (:func:`~segrenorm.simulate.retina.rasterise` with ``OctGrid(vendor.shape,
            vendor.spacing)``).
        vendor: The device.
        rng: Random generator for speckle and noise (unused by a :meth:`OctVendor.clean` one).

    Returns:
        float32 (X, Y, Z) integers in ``[0, vendor.levels]``.

    Raises:
        ConfigError: If the volume is not on the vendor's grid.
    """
    out = np.empty(vendor.shape, np.float32)
    for z0, z1, chunk in _linear_chunks(volume, vendor, rng):
        out[:, :, z0:z1] = compress(chunk, vendor)
    return out
