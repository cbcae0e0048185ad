"""ITK-format headers (``.mha``, ``.mhd``, ``.nrrd``), read through SimpleITK and checked before
any voxel is read.

The checks are those of ``segrenorm.volumes.headers``; MetaImage headers are also screened for
the values that crash ITK's reader outright (a segfault is no error message), and their inline
or raw data is measured against the declared grid.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from segrenorm.errors import InputError, one_line
from segrenorm.volumes.headers import (
    CORRUPT,
    HeaderInfo,
    check_affine,
    check_fits,
    check_shape,
)

# ITK stores world points in LPS; NIfTI (and segrenorm) in RAS. Flipping x and y converts.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_ITK_TYPES = {
    sitk.sitkUInt8: "uint8", sitk.sitkInt8: "int8", sitk.sitkUInt16: "uint16",
    sitk.sitkInt16: "int16", sitk.sitkUInt32: "uint32", sitk.sitkInt32: "int32",
    sitk.sitkUInt64: "uint64", sitk.sitkInt64: "int64", sitk.sitkFloat32: "float32",
    sitk.sitkFloat64: "float64",
}  # fmt: skip
_METAIMAGE_HEAD = 65536  # bytes searched for a MetaImage header's ElementDataFile line


def open_itk(path: Path, suffix: str) -> tuple[sitk.ImageFileReader, HeaderInfo]:
    """Read and check an ITK-format header (``.mha``, ``.mhd``, ``.nrrd``): no voxel is read.

    Args:
        path: An existing file.
        suffix: Its image suffix.

    Returns:
        The reader (its ``Execute`` reads the voxels) and the checked declaration.

    Raises:
        InputError: If the file is not of its suffix's format, its voxels are not real scalars,
            its grid is absurd, its geometry is degenerate or it is shorter than it declares.
    """
    meta = _metaimage_fields(path) if suffix in (".mha", ".mhd") else None
    if meta is not None:
        _check_metaimage_fields(path, meta[0])
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise itk_error(path, suffix, exc) from exc
    components = reader.GetNumberOfComponents()
    if components != 1:
        raise InputError(
            f"{path}: voxels have {components} components (colour or vector image); "
            "segrenorm reads single-channel volumes."
        )
    pixel = reader.GetPixelID()
    if pixel not in _ITK_TYPES:
        name = sitk.GetPixelIDValueAsString(pixel)
        raise InputError(f"{path}: voxel type {name} is not a real scalar; convert it.")
    dtype = _ITK_TYPES[pixel]
    shape = tuple(int(n) for n in reader.GetSize())
    check_shape(path, shape)
    dim = reader.GetDimension()
    spacing = np.asarray(reader.GetSpacing(), dtype=np.float64)[:3]
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(
            f"{path}: the voxel sizes (spacing) {spacing.tolist()} include 0, a negative "
            "value, NaN or Inf; fix the header."
        )
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    origin = np.asarray(reader.GetOrigin(), dtype=np.float64)[:3]
    affine = np.eye(4)
    affine[:3, :3] = LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = LPS_TO_RAS @ origin
    check_affine(path, affine)
    if meta is not None:
        _check_metaimage_data(path, *meta, math.prod(shape) * np.dtype(dtype).itemsize)
    return reader, HeaderInfo(shape, affine, dtype, None, "itk")


def itk_error(path: Path, suffix: str, exc: RuntimeError) -> InputError:
    """The message for what SimpleITK raised reading ``path``.

    Args:
        path: The file.
        suffix: Its image suffix.
        exc: SimpleITK's error.
    """
    # ITK's messages run over several lines with source locations; the last says why.
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return InputError(
        f"{path}: the file is truncated or corrupt, or not a {suffix} image "
        f"({one_line(lines[-1])}). Re-export or re-copy it."
    )


def _metaimage_fields(path: Path) -> tuple[dict[str, str], int] | None:
    """A MetaImage header's fields (lower-case keys) and where its inline data would start."""
    with path.open("rb") as handle:
        head = handle.read(_METAIMAGE_HEAD)
    fields: dict[str, str] = {}
    position = 0
    for line in head.splitlines(keepends=True):
        position += len(line)
        key, _, value = line.decode("latin-1").partition("=")
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            return fields, position
    return None  # no data line in the first 64 kB: SimpleITK refuses the file itself


def _check_metaimage_fields(path: Path, fields: dict[str, str]) -> None:
    """Refuse the MetaImage fields that crash ITK's reader (a dimension count it cannot use
    segfaults it; a file pattern with step 0 divides by zero) before ITK sees them."""
    ndims = fields.get("ndims", "")
    if not ndims.isdigit() or not 1 <= int(ndims) <= 5:  # SimpleITK reads up to 5D
        raise InputError(f"{path}: the header gives NDims = {ndims!r}; {CORRUPT}.")
    name = fields.get("elementdatafile", "").split()
    if len(name) > 1:  # a numbered file series: "pattern first last step"
        numbers = name[1:]
        valid = len(numbers) == 3 and all(n.lstrip("-").isdigit() for n in numbers)
        if not valid or int(numbers[2]) == 0:
            raise InputError(
                f"{path}: the data file pattern {' '.join(name)!r} is not 'NAME FIRST LAST "
                f"STEP' with a non-zero step; {CORRUPT}."
            )


def _check_metaimage_data(path: Path, fields: dict[str, str], start: int, needed: int) -> None:
    """Refuse uncompressed MetaImage data shorter than declared (inline or a single raw file)."""
    if fields.get("compresseddata", "false").lower() == "true" or "headersize" in fields:
        return  # compressed sizes and skipped headers are checked by SimpleITK
    name = fields["elementdatafile"]
    if name.upper() == "LOCAL":
        check_fits(path, start + needed, path.stat().st_size, "the file holds")
    elif name.upper() != "LIST" and " " not in name:
        raw = path.parent / name
        if raw.is_file():
            check_fits(path, needed, raw.stat().st_size, f"its data file {raw} holds")
