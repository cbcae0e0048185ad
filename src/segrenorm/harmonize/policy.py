"""The harmonization policies for volumes unlike the training data, and for output types.

See :mod:`segrenorm.harmonize.harmonizer` for the policy text: reorient always (lossless) and warn
on oblique grids; put the volume on the model's grid, all three axes, when any voxel size is off
by more than a tolerance (and back at the end), refuse spacings far beyond it; round and clip to
an integer output type with a warning when clipping happens.

The grid rule is ``prepare``'s (:meth:`~segrenorm.data.slicing.SliceRecipe.to_grid`): a volume
off the grid along any axis is resampled along all three, for 2D and 2.5-D models alike, so a
model translates slices cut at the voxel size it was trained on. Only the tolerance differs:
``prepare`` leaves volumes within 0.1% as they are, harmonize within ``spacing_tolerance``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from segrenorm.errors import ConfigError, InputError, SegrenormError
from segrenorm.volumes.images import Geometry, ScalarImage
from segrenorm.volumes.spatial import INTERPOLATIONS, resample_to_spacing

__all__ = ["apply_dtype", "obliquity_notes", "resample_onto", "to_training_grid"]


def obliquity_notes(geometry: Geometry, where: str, *, max_deg: float, plane: str) -> list[str]:
    """A warning when the voxel axes are more than ``max_deg`` from every world axis.

    Args:
        geometry: the input's geometry.
        where: the file, for the message.
        max_deg: obliquity tolerated silently, in degrees.
        plane: the training plane, for the message.
    """
    columns = geometry.affine[:3, :3] / np.asarray(geometry.spacing)[None, :]
    cosines = np.clip(np.abs(columns).max(axis=0), -1.0, 1.0)
    angle = float(np.degrees(np.arccos(cosines.min())))
    if angle <= max_deg:
        return []
    return [
        f"{where}: the voxel axes are {angle:.0f} degrees oblique to the scanner axes; "
        f"slices are cut along the nearest planes, which differ from the training {plane} "
        "plane. Resample to an axis-aligned grid for results closer to training."
    ]


def to_training_grid(
    canonical: ScalarImage,
    where: str,
    *,
    spacing: Sequence[float],
    tolerance: float,
    max_ratio: float,
    interpolation: str = "linear",
) -> tuple[ScalarImage, list[str]]:
    """The volume on the model's grid: all three axes resampled when any one is off.

    If the voxel size along any axis is more than ``tolerance`` off the grid, the volume is
    resampled (``interpolation``: linear, or nearest for OCT) to the grid along all three axes;
    otherwise it is used as it is.

    Args:
        canonical: the RAS+ volume.
        where: the file, for messages.
        spacing: the model's grid: its training cache's spacing (RAS, mm).
        tolerance: relative difference tolerated without resampling, per axis.
        max_ratio: ratio (either way, along any axis) beyond which the volume is refused.
        interpolation: ``"linear"`` or ``"nearest"`` (see
            :data:`~segrenorm.volumes.spatial.INTERPOLATIONS`).

    Returns:
        ``(volume, notes)``: ``canonical`` itself and no note, or the resampled volume and
        a warning.

    Raises:
        InputError: a spacing more than ``max_ratio`` off, or a grid too small once resampled.
    """
    have = np.asarray(canonical.geometry.spacing, dtype=np.float64)
    want = np.asarray(spacing, dtype=np.float64)
    ratio = have / want
    far = [a for a in range(3) if max(ratio[a], 1 / ratio[a]) > max_ratio]
    if far:
        raise InputError(
            f"{where}: voxel size {_mm(have)} mm is too far from the training data's "
            f"{_mm(want)} mm (more than {max_ratio:g}x along "
            f"{', '.join('RAS'[a] for a in far)}); is the header's unit right? Resample "
            "the volume to a spacing near the training spacing first."
        )
    off = [a for a in range(3) if abs(ratio[a] - 1) > tolerance]
    if not off:
        return canonical, []
    resampled = resample_to_spacing(
        canonical, (float(want[0]), float(want[1]), float(want[2])), interpolation=interpolation
    )
    if any(n < 2 for n in resampled.geometry.shape):
        raise InputError(
            f"{where}: at the training spacing {_mm(want)} mm the volume is "
            f"{resampled.geometry.shape} voxels, too small to translate."
        )
    note = (
        f"{where}: voxel size {_mm(have)} mm differs from the training data's "
        f"{_mm(want)} mm by more than {tolerance:.0%} (along {', '.join('RAS'[a] for a in off)}); "
        f"resampled to {_mm(want)} mm for translation and back to the input grid "
        f"({'nearest neighbour' if interpolation == 'nearest' else interpolation} "
        "interpolation)."
    )
    return resampled, [note]


def apply_dtype(
    data: np.ndarray, geometry: Geometry, where: str, *, dtype: str, target_name: str
) -> tuple[np.ndarray, Geometry, list[str]]:
    """Round and clip to an integer output type; give the geometry that type and a header.

    Args:
        data: harmonized float32 intensities.
        geometry: the input's geometry.
        where: the file, for messages.
        dtype: ``"input"`` (the input's on-disk type) or a type name.
        target_name: the target site, recorded in the NIfTI header's description.

    Returns:
        ``(data, geometry, notes)``: float32 data (whole numbers for integer types), the
        geometry to save with, and a warning if values were clipped.
    """
    name = geometry.dtype if dtype == "input" else dtype
    notes: list[str] = []
    kind = np.dtype(name).kind
    if kind in "iu":
        info = np.iinfo(name)
        outside = int(np.count_nonzero((data < info.min) | (data > info.max)))
        if outside:
            notes.append(
                f"{where}: {outside} harmonized voxels fall outside the {name} range "
                f"{info.min}..{info.max} of the input and were clipped; use dtype float32."
            )
        data = np.clip(np.rint(data), info.min, info.max).astype(np.float32)
    elif kind != "f":
        raise ConfigError(f"{where}: cannot write harmonized intensities as {name}")
    header = geometry.header
    if header is not None:
        header = header.copy()
        header["cal_min"], header["cal_max"] = 0.0, 0.0  # the input's window is stale
        header["descrip"] = f"segrenorm harmonized to {target_name}"[:79].encode()
    return data, dataclasses.replace(geometry, dtype=name, header=header), notes


def _mm(values: np.ndarray | Sequence[float]) -> str:
    return "x".join(f"{float(v):.3g}" for v in values)


def resample_onto(
    data: np.ndarray, source: Geometry, target: Geometry, *, interpolation: str = "linear"
) -> np.ndarray:
    """Resampling of ``data`` (on ``source``'s grid) onto ``target``'s voxel grid.

    Args:
        data: an array on ``source``'s grid.
        source: its geometry.
        target: the grid to resample onto.
        interpolation: ``"linear"`` (default) or ``"nearest"`` (OCT: the paper's rule).

    Raises:
        ConfigError: an unknown interpolation.
        SegrenormError: a degenerate affine.
    """
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"interpolation {interpolation!r} is unknown: use {', '.join(INTERPOLATIONS)}"
        )
    voxel_map = np.linalg.solve(source.affine, target.affine)  # target voxel -> source voxel
    if not np.all(np.isfinite(voxel_map)) or math.isclose(np.linalg.det(voxel_map[:3, :3]), 0):
        raise SegrenormError("cannot map the resampled volume back: degenerate affine")
    return np.asarray(
        ndimage.affine_transform(
            data,
            voxel_map[:3, :3],
            offset=voxel_map[:3, 3],
            output_shape=target.shape,
            order=INTERPOLATIONS[interpolation],
            mode="nearest",
        ),
        dtype=np.float32,
    )
