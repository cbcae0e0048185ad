"""Volumes in and out: NIfTI through nibabel, MetaImage and NRRD through SimpleITK.

This module validates; the format code itself lives in ``segrenorm.volumes.formats``, the
in-memory types in ``segrenorm.volumes.images`` and file names in ``segrenorm.volumes.paths``.

Loading validates eagerly: a file that is missing, truncated, not 3D, non-finite or empty fails
here with a message naming it, not later inside training. Writing is atomic and never replaces
an existing file by default.

Example:
    >>> img = load_image("sub-01_T1w.nii.gz")  # doctest: +SKIP
    >>> save_image(img.data * 2, "out.nii.gz", geometry=img.geometry)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes.formats import read_file, read_header, write_file
from segrenorm.volumes.headers import HeaderInfo
from segrenorm.volumes.images import Geometry, LabelMap, ScalarImage, max_abs_diff
from segrenorm.volumes.paths import image_suffix

__all__ = ["load_image", "load_label", "read_geometry", "save_image", "save_label"]

_INT_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64")
_SAVE_DTYPES = (*_INT_DTYPES, "float32", "float64")
_LABEL_TOL = 1e-3  # a stored label may carry float round-off from scl_slope


def read_geometry(path: str | Path) -> Geometry:
    """Read the grid of an image or label file from its header alone: no voxel is read.

    The header passes the same checks as in :func:`load_image`, and the result equals
    ``load_image(path).geometry`` for a file that loads.

    Args:
        path: A ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd`` or ``.nrrd`` file.

    Raises:
        InputError: If the file is missing, unsupported, not 3D (a 4D image with one volume
            counts as 3D), declares an absurd grid, a degenerate or non-finite affine, an
            unsupported voxel type, or more data than the file holds.
    """
    file = Path(path)
    _check_file(file)
    return _geometry(read_header(file, image_suffix(file)))


def load_image(path: str | Path) -> ScalarImage:
    """Read a 3D intensity volume as float32, with its geometry.

    Args:
        path: A ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd`` or ``.nrrd`` file.

    Raises:
        InputError: If the file is missing, unsupported, truncated or corrupt, not 3D (a 4D
            image with one volume is squeezed), holds NaN/Inf, or is constant.
    """
    file = Path(path)
    raw, geometry = _read_volume(file)
    data = raw.astype(np.float32)  # float64 beyond float32 range becomes Inf and is refused
    _check_finite(data, file)
    low, high = float(data.min()), float(data.max())
    if low == high:
        raise InputError(
            f"{file}: every voxel has the value {low:g}; the volume is empty or constant. "
            "Check that the right file was exported."
        )
    return ScalarImage(data=data, geometry=geometry, path=file)


def load_label(
    path: str | Path, *, n_classes: int | None = None, like: ScalarImage | None = None
) -> LabelMap:
    """Read a 3D label map of integer classes 0..n_classes-1.

    An all-background map is accepted: a subject may have no lesion.

    Args:
        path: A label file in any supported format; float storage is fine if values are whole.
        n_classes: Number of classes; values at or above it are refused. None skips that check.
        like: The image the labels belong to; shape and affine (within 1e-3 mm) must match.

    Raises:
        InputError: For the reasons of :func:`load_image` other than constancy, and for
            non-integer, negative or out-of-range values, or a grid that differs from ``like``.
    """
    if n_classes is not None and n_classes < 1:
        raise ConfigError(f"n_classes={n_classes} must be at least 1")
    file = Path(path)
    raw, geometry = _read_volume(file)
    _check_finite(raw, file)
    if raw.dtype.kind == "f":
        rounded = np.rint(raw)
        off = np.abs(raw - rounded) > _LABEL_TOL
        if off.any():
            bad = np.unique(raw[off])[:5]
            raise InputError(
                f"{file}: a label map must hold whole numbers but has {int(off.sum())} voxels "
                f"such as {', '.join(f'{v:g}' for v in bad)}. Is this an intensity image or "
                "a probability map? Pass the discrete segmentation."
            )
        raw = rounded.astype(np.int64)
    values = np.unique(raw)
    limit = n_classes if n_classes is not None else np.iinfo(np.int16).max + 1
    bad_values = values[(values < 0) | (values >= limit)]
    if bad_values.size:
        shown = ", ".join(str(int(v)) for v in bad_values[:10])
        allowed = f"0..{limit - 1}" + (f" (n_classes={n_classes})" if n_classes else "")
        raise InputError(
            f"{file}: label values {shown} fall outside the classes {allowed}. "
            "Remap the labels or set the right number of classes."
        )
    dtype = np.uint8 if values.size == 0 or values.max() <= 255 else np.int16
    if like is not None:
        _check_same_grid(geometry, file, like.geometry, like.path)
    return LabelMap(data=raw.astype(dtype), geometry=geometry, path=file)


def save_image(
    data: np.ndarray,
    path: str | Path,
    *,
    geometry: Geometry,
    dtype: str | np.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an intensity volume on ``geometry``'s grid, atomically; the format follows the suffix.

    Args:
        data: (X, Y, Z) array with ``geometry.shape``.
        path: Output file; its suffix picks NIfTI or an ITK format.
        geometry: The grid (and, for NIfTI input, the header) to write with.
        dtype: On-disk voxel type; defaults to ``geometry.dtype``. Integer types round and clip.
        overwrite: Replace an existing file instead of refusing.

    Raises:
        InputError: If the data are not finite or do not fit the geometry, or the file exists.
        ConfigError: If ``dtype`` is not a supported voxel type.
    """
    name = np.dtype(dtype if dtype is not None else geometry.dtype).name
    if name not in _SAVE_DTYPES:
        raise ConfigError(f"dtype {name!r} cannot be saved; use one of {', '.join(_SAVE_DTYPES)}")
    array = _check_output_array(data, path, geometry)
    _check_finite(array, Path(path))
    if np.dtype(name).kind in "iu":
        info = np.iinfo(name)
        array = np.minimum(np.maximum(np.rint(array), info.min), info.max)
    return _write_volume(array.astype(name), Path(path), geometry, overwrite, is_label=False)


def save_label(
    data: np.ndarray, path: str | Path, *, geometry: Geometry, overwrite: bool = False
) -> Path:
    """Write a label map on ``geometry``'s grid, atomically; the format follows the suffix.

    The on-disk type is ``geometry.dtype`` when that is an integer type holding every value,
    else uint8 (int16 above 255). Labels are never rounded or clipped silently.

    Args:
        data: (X, Y, Z) array of whole, non-negative class indices with ``geometry.shape``.
        path: Output file; its suffix picks NIfTI or an ITK format.
        geometry: The grid (and, for NIfTI input, the header) to write with.
        overwrite: Replace an existing file instead of refusing.

    Raises:
        InputError: If values are negative, fractional or above 32767, the shape differs from
            the geometry, or the file exists.
    """
    array = _check_output_array(data, path, geometry)
    _check_finite(array, Path(path))
    if array.dtype.kind not in "iub" and np.any(array != np.rint(array)):
        raise InputError(f"{path}: label data must be whole numbers; take an argmax first.")
    low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
    if low < 0 or high > np.iinfo(np.int16).max:
        raise InputError(f"{path}: label values must lie in 0..32767, got {low}..{high}.")
    dtype = np.dtype(geometry.dtype)
    if dtype.kind not in "iu" or high > np.iinfo(dtype).max:
        dtype = np.dtype(np.uint8 if high <= 255 else np.int16)
    return _write_volume(array.astype(dtype), Path(path), geometry, overwrite, is_label=True)


# --------------------------------------------------------------------------- reading helpers


def _check_file(path: Path) -> None:
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path.")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image file.")


def _geometry(info: HeaderInfo) -> Geometry:
    return Geometry.from_affine(
        info.affine, info.shape[:3], dtype=info.dtype, header=info.header, fmt=info.fmt
    )


def _read_volume(path: Path) -> tuple[np.ndarray, Geometry]:
    """Read voxels (native type, or float after NIfTI scaling) and geometry, squeezed to 3D.

    The header is checked before anything is read (``segrenorm.volumes.headers``): a file
    declaring an absurd or 4D grid, or more data than it holds, is refused unread.
    """
    _check_file(path)
    array, info = read_file(path, image_suffix(path))
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: voxel type {array.dtype} is not a real scalar; convert it.")
    if array.shape != info.shape:
        raise InputError(
            f"{path}: holds voxels of shape {array.shape} but its header declares "
            f"{info.shape}; the file is corrupt. Re-export or re-copy it."
        )
    if array.ndim == 4:
        array = array[..., 0]  # the header check let through only one volume
    return array, _geometry(info)


def _check_finite(array: np.ndarray, path: Path) -> None:
    if array.dtype.kind != "f":
        return
    finite = np.isfinite(array)
    if not finite.all():
        n_nan = int(np.isnan(array).sum())
        n_inf = int((~finite).sum()) - n_nan
        raise InputError(
            f"{path}: {n_nan} NaN and {n_inf} Inf voxels; replace them (e.g. with 0) "
            "before harmonizing."
        )


def _check_same_grid(geometry: Geometry, path: Path, ref: Geometry, ref_path: Path | None) -> None:
    ref_name = ref_path if ref_path is not None else "the image"
    if geometry.shape != ref.shape:
        raise InputError(
            f"{path}: label shape {geometry.shape} differs from {ref_name} shape {ref.shape}; "
            "resample the labels onto the image grid (nearest neighbour)."
        )
    if not geometry.matches(ref):
        diff = max_abs_diff(geometry.affine, ref.affine)
        raise InputError(
            f"{path}: label affine {np.round(geometry.affine, 4).tolist()} differs from "
            f"{ref_name} affine {np.round(ref.affine, 4).tolist()} by up to {diff:.4g} mm; "
            "the labels are not on the image grid. Resample them (nearest neighbour)."
        )


# --------------------------------------------------------------------------- writing helpers


def _check_output_array(data: np.ndarray, path: str | Path, geometry: Geometry) -> np.ndarray:
    array = np.asarray(data)
    if array.dtype.kind not in "biuf":
        raise InputError(f"{path}: cannot save voxels of type {array.dtype}; pass real numbers.")
    if array.shape != geometry.shape:
        raise InputError(
            f"{path}: data shape {array.shape} differs from the geometry shape "
            f"{geometry.shape}; save on a geometry built for this grid."
        )
    return array


def _write_volume(
    array: np.ndarray, path: Path, geometry: Geometry, overwrite: bool, *, is_label: bool
) -> Path:
    suffix = image_suffix(path)  # refuses an unsupported suffix before anything is written
    return write_file(
        array,
        path,
        suffix,
        geometry.affine,
        geometry.header,
        is_label=is_label,
        overwrite=overwrite,
    )
