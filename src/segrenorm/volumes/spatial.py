"""Spatial steps on volumes in memory: orientation, resampling, slicing and padding.

Every function here is pure NumPy/SciPy on in-memory volumes; reading and writing files is
``segrenorm.volumes.readwrite``'s job, intensity scaling and foreground masks are
``segrenorm.volumes.intensity``'s, and ``segrenorm.data.slicing`` combines them into the recipe
that cuts a volume like the training slices.

Conventions:
    * Volumes are ``(X, Y, Z)`` arrays whose axes, after :func:`to_canonical`, point to
      Right, Anterior and Superior (RAS+), so ``SLICE_AXES`` names the same anatomical plane
      for every input orientation.
    * Images are scaled to ``[-1, 1]`` (the generators end in ``tanh``); label maps are never
      intensity-scaled and only ever resampled with nearest-neighbour interpolation.
"""

from __future__ import annotations

import dataclasses
from typing import TypeVar

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation
from nibabel.orientations import ornt_transform as _ornt_transform
from scipy import ndimage

from segrenorm.errors import ConfigError, InputError
from segrenorm.vocabulary import SLICE_AXES
from segrenorm.volumes.images import Geometry, LabelMap, ScalarImage

__all__ = [
    "INTERPOLATIONS",
    "from_canonical",
    "pad_to_shape",
    "resample_to_spacing",
    "resolve_slice_axis",
    "round_up",
    "slice_volume",
    "stack_slices",
    "to_canonical",
    "unpad",
]

_RAS = ("R", "A", "S")
VolumeT = TypeVar("VolumeT", ScalarImage, LabelMap)
Pads = tuple[tuple[int, int], tuple[int, int]]
#: Image interpolations of :func:`resample_to_spacing` and their spline orders. OCT images use
#: ``"nearest"`` (the paper's rule: resampled voxels keep measured values and speckle).
INTERPOLATIONS: dict[str, int] = {"nearest": 0, "linear": 1, "cubic": 3}


# --------------------------------------------------------------------------- orientation


def _canonical_ornt(affine: np.ndarray) -> np.ndarray:
    """The nibabel orientation that takes an array with this affine to RAS+."""
    return _ornt_transform(io_orientation(affine), axcodes2ornt(_RAS))


def to_canonical(image: VolumeT) -> VolumeT:
    """Reorient a volume so that its voxel axes point to R, A and S (axis flips/permutations only).

    No interpolation happens: the voxel values are the same, only their order changes, and the
    affine is updated so that every voxel keeps its world position. Oblique acquisitions keep
    their obliquity (the closest axis is chosen per direction).

    Args:
        image: a ``ScalarImage`` or ``LabelMap`` in any orientation.

    Returns:
        A new object of the same type in RAS+ orientation (``image`` is not modified).

    Example:
        >>> canonical = to_canonical(load_image("t1.nii.gz"))  # doctest: +SKIP
        >>> canonical.geometry.axcodes
        ('R', 'A', 'S')
    """
    geometry = image.geometry
    to_ras = _canonical_ornt(geometry.affine)
    data = np.ascontiguousarray(apply_orientation(image.data, to_ras))
    affine = geometry.affine @ inv_ornt_aff(to_ras, geometry.shape)
    spacing = [0.0, 0.0, 0.0]
    for old_axis, (new_axis, _flip) in enumerate(to_ras):
        spacing[int(new_axis)] = float(geometry.spacing[old_axis])
    new_geometry = dataclasses.replace(
        geometry,
        affine=affine,
        shape=(int(data.shape[0]), int(data.shape[1]), int(data.shape[2])),
        spacing=(spacing[0], spacing[1], spacing[2]),
        axcodes=_RAS,
    )
    return dataclasses.replace(image, data=data, geometry=new_geometry)


def from_canonical(data: np.ndarray, original: Geometry) -> np.ndarray:
    """Undo :func:`to_canonical`: put a canonical array back in the original voxel order.

    Args:
        data: ``(X, Y, Z)`` or ``(X, Y, Z, ...)`` array in the canonical orientation of
            ``original`` (e.g. a harmonized volume or a stack of predictions).
        original: the geometry of the volume before :func:`to_canonical`.

    Returns:
        The array in the original orientation, ready to save with ``original``.

    Raises:
        InputError: if ``data`` does not have the canonical shape of ``original``.
    """
    to_ras = _canonical_ornt(original.affine)
    expected = [0, 0, 0]
    for old_axis, (new_axis, _flip) in enumerate(to_ras):
        expected[int(new_axis)] = int(original.shape[old_axis])
    if data.ndim < 3 or list(data.shape[:3]) != expected:
        raise InputError(
            f"array of shape {tuple(data.shape)} cannot be mapped back to a volume of shape "
            f"{tuple(original.shape)}: its canonical (RAS) shape is {tuple(expected)}; pass the "
            "array produced from that volume's canonical form"
        )
    back = _ornt_transform(axcodes2ornt(_RAS), io_orientation(original.affine))
    return np.ascontiguousarray(apply_orientation(data, back))


# --------------------------------------------------------------------------- slicing


def resolve_slice_axis(axis: str | int) -> int:
    """Return the canonical axis index of a slice plane name (or validate an index).

    Args:
        axis: ``"sagittal"``, ``"coronal"``, ``"axial"`` or an index 0..2.

    Raises:
        ConfigError: for any other value.
    """
    if isinstance(axis, str):
        if axis not in SLICE_AXES:
            raise ConfigError(f"unknown slice axis {axis!r}: choose one of {', '.join(SLICE_AXES)}")
        return SLICE_AXES[axis]
    if isinstance(axis, bool) or not isinstance(axis, int | np.integer) or not 0 <= axis <= 2:
        raise ConfigError(f"slice axis {axis!r} is not 0, 1 or 2 (or a plane name)")
    return int(axis)


def slice_volume(arr3d: np.ndarray, axis: str | int) -> np.ndarray:
    """Cut a volume into 2D slices across ``axis``: ``(X, Y, Z)`` -> ``(n, H, W)``.

    Args:
        arr3d: a 3D array (canonical orientation, so that plane names mean what they say).
        axis: slice plane name or axis index (see ``SLICE_AXES``).

    Returns:
        A view with the slice axis first; the other two axes keep their order.
    """
    if arr3d.ndim != 3:
        raise InputError(f"slice_volume needs a 3D array, got shape {tuple(arr3d.shape)}")
    return np.moveaxis(arr3d, resolve_slice_axis(axis), 0)


def stack_slices(slices: np.ndarray, axis: str | int) -> np.ndarray:
    """Inverse of :func:`slice_volume`: ``(n, H, W)`` -> the 3D volume.

    Args:
        slices: a stack of slices, slice index first.
        axis: the plane the slices were cut in.
    """
    if slices.ndim != 3:
        raise InputError(f"stack_slices needs an (n, H, W) stack, got shape {slices.shape}")
    return np.moveaxis(slices, 0, resolve_slice_axis(axis))


# --------------------------------------------------------------------------- resampling


def _spline_order(
    volume: ScalarImage | LabelMap, order: int | None, interpolation: str | None
) -> int:
    """The spline order of one resampling: labels 0 only, images by ``interpolation``/``order``."""
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"interpolation {interpolation!r} is unknown: use {', '.join(INTERPOLATIONS)}"
        )
    chosen = None if interpolation is None else INTERPOLATIONS[interpolation]
    if chosen is not None and order is not None and order != chosen:
        raise ConfigError(
            f"order={order} contradicts interpolation={interpolation!r} (order {chosen}); "
            "give one of them"
        )
    chosen = order if chosen is None else chosen
    if isinstance(volume, LabelMap):
        if chosen not in (None, 0):
            raise ConfigError(
                f"label maps are resampled with order 0 only (nearest neighbour), got "
                f"order={chosen}"
            )
        return 0
    spline = 1 if chosen is None else chosen
    if spline not in INTERPOLATIONS.values():
        raise ConfigError(f"image resampling order must be 0, 1 or 3, got {chosen}")
    return spline


def resample_to_spacing(
    volume: VolumeT,
    spacing: tuple[float, float, float],
    *,
    order: int | None = None,
    interpolation: str | None = None,
) -> VolumeT:
    """Resample a volume to a new voxel spacing, keeping its field of view and world position.

    Voxel corners of the old and new grids coincide at the volume's first corner; the new shape
    is ``round(old_shape * old_spacing / spacing)``.

    Args:
        volume: a ``ScalarImage`` or ``LabelMap``.
        spacing: target voxel size in mm along the volume's three voxel axes.
        order: spline order for images, 0 (nearest), 1 (default, linear) or 3 (cubic).
        interpolation: the same by name (see :data:`INTERPOLATIONS`): ``"nearest"``,
            ``"linear"`` or ``"cubic"``. Label maps are always resampled with nearest
            neighbour and refuse anything else.

    Returns:
        A new object of the same type with updated data, shape, spacing and affine; with
        nearest neighbour its values are a subset of the input's, in the input's dtype.

    Raises:
        ConfigError: a spacing that is not three positive numbers, an unknown interpolation
            or order, ``order`` and ``interpolation`` that disagree, or a label map asked for
            another interpolation than nearest neighbour.

    Example:
        >>> image = ScalarImage(np.arange(8.0).reshape(2, 2, 2), Geometry.from_affine(
        ...     np.eye(4), (2, 2, 2)))
        >>> finer = resample_to_spacing(image, (0.5, 1.0, 1.0), interpolation="nearest")
        >>> finer.data[:, 0, 0].tolist()
        [0.0, 0.0, 4.0, 4.0]
    """
    target = np.asarray(spacing, dtype=np.float64)
    if target.shape != (3,) or not np.all(np.isfinite(target)) or np.any(target <= 0):
        raise ConfigError(f"spacing {spacing!r} must be three positive numbers (mm)")
    spline = _spline_order(volume, order, interpolation)
    geometry = volume.geometry
    old = np.asarray(geometry.spacing, dtype=np.float64)
    step = target / old  # old voxels per new voxel
    shape = tuple(
        max(1, round(n * s_old / s_new))
        for n, s_old, s_new in zip(geometry.shape, old, target, strict=True)
    )
    # Centre of new voxel j sits at old index (j + 0.5) * step - 0.5.
    offset = 0.5 * step - 0.5
    source = volume.data.astype(np.float32) if spline else volume.data
    data = ndimage.affine_transform(
        source, step, offset=offset, output_shape=shape, order=spline, mode="nearest"
    )
    if not spline:
        data = data.astype(volume.data.dtype, copy=False)
    voxel_to_old = np.eye(4)
    voxel_to_old[:3, :3] = np.diag(step)
    voxel_to_old[:3, 3] = offset
    new_geometry = dataclasses.replace(
        geometry,
        affine=geometry.affine @ voxel_to_old,
        shape=(int(shape[0]), int(shape[1]), int(shape[2])),
        spacing=(float(target[0]), float(target[1]), float(target[2])),
    )
    return dataclasses.replace(volume, data=data, geometry=new_geometry)


# --------------------------------------------------------------------------- padding


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``n``.

    Args:
        n: a non-negative size.
        multiple: a positive step (e.g. 16 so that four 2x downsamplings divide evenly).
    """
    if multiple < 1 or n < 0:
        raise ConfigError(
            f"round_up needs n >= 0 and multiple >= 1, got n={n}, multiple={multiple}"
        )
    return -(-int(n) // int(multiple)) * int(multiple)


def pad_to_shape(
    arr: np.ndarray, shape: tuple[int, int], value: float = 0.0
) -> tuple[np.ndarray, Pads]:
    """Pad the last two axes symmetrically (extra pixel after) to ``shape``.

    Args:
        arr: a 2D slice ``(H, W)`` or a stack ``(..., H, W)``.
        shape: target ``(H, W)``, at least as large as the input.
        value: fill value (-1 for scaled images, 0 for labels and masks).

    Returns:
        ``(padded, pads)`` where ``pads = ((top, bottom), (left, right))`` undoes with
        :func:`unpad`.
    """
    if arr.ndim < 2:
        raise InputError(f"pad_to_shape needs at least 2 axes, got shape {arr.shape}")
    height, width = arr.shape[-2:]
    if shape[0] < height or shape[1] < width:
        raise InputError(
            f"cannot pad slices of shape {(height, width)} to the smaller shape {tuple(shape)}"
        )
    dh, dw = shape[0] - height, shape[1] - width
    pads: Pads = ((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2))
    width_spec = [(0, 0)] * (arr.ndim - 2) + [pads[0], pads[1]]
    return np.pad(arr, width_spec, mode="constant", constant_values=value), pads


def unpad(arr: np.ndarray, pads: Pads) -> np.ndarray:
    """Remove the padding that :func:`pad_to_shape` added.

    Args:
        arr: a padded slice or stack.
        pads: ``((top, bottom), (left, right))`` as returned by :func:`pad_to_shape`.
    """
    (top, bottom), (left, right) = pads
    height, width = arr.shape[-2:]
    return arr[..., top : height - bottom, left : width - right]
