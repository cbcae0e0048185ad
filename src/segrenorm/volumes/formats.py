"""File formats behind :mod:`segrenorm.volumes.readwrite`: NIfTI through nibabel, MetaImage/NRRD
through SimpleITK.

Used by ``segrenorm.volumes.readwrite``, which validates what these functions read and decides
what they write. Everything here speaks ``(array, affine, header)`` with the affine in RAS+
millimetres (NIfTI convention) and the array indexed ``[x, y, z, ...]``; ITK's LPS world and
``[z, y, x]`` arrays are converted at this boundary.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from nibabel.filebasedimages import ImageFileError

from segrenorm.atomic import atomic_named_path
from segrenorm.errors import InputError, one_line
from segrenorm.volumes.images import max_abs_diff

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# ITK stores world points in LPS; NIfTI (and segrenorm) in RAS. Flipping x and y converts.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


# --------------------------------------------------------------------------- reading


def read_file(path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray, Any | None, str, str]:
    """Read any supported file with the library its suffix calls for.

    Args:
        path: An existing image file.
        suffix: Its lower-case image suffix (``segrenorm.volumes.paths.image_suffix``).

    Returns:
        ``(array, affine, header, dtype, fmt)``: voxels in ``[x, y, z, ...]`` order, the RAS+
        affine, the NIfTI header (None for ITK formats), the dtype to save with by default and
        the format family ``"nifti"`` or ``"itk"``.

    Raises:
        InputError: If the file is truncated, corrupt or not of its suffix's format.
    """
    if suffix in NIFTI_SUFFIXES:
        array, affine, header, dtype = read_nifti(path)
        return array, affine, header, dtype, "nifti"
    array, affine = read_itk(path, suffix)
    return array, affine, None, array.dtype.name, "itk"


def read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, Any, str]:
    """Read a NIfTI file: voxels (scaled by scl_slope/scl_inter), affine, header copy, dtype.

    The dtype is the one to save with by default: the on-disk type, or ``"float32"`` when the
    file stores scaled integers.

    Args:
        path: A ``.nii`` or ``.nii.gz`` file that exists.

    Raises:
        InputError: If the file is truncated, corrupt or not NIfTI.
    """
    try:
        image = nib.load(str(path))
    except (ImageFileError, OSError, EOFError, zlib.error, ValueError) as exc:
        raise InputError(
            f"{path}: the file is truncated or corrupt, or not NIfTI ({one_line(exc)}). "
            "Re-export or re-copy it."
        ) from exc
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image subclasses it
        raise InputError(f"{path}: read as {type(image).__name__}, not NIfTI; convert it.")
    try:
        # nibabel reads lazily: a cut .nii.gz only fails once the voxels are decompressed.
        array = np.asanyarray(image.dataobj)
    except (zlib.error, EOFError, OSError, ValueError) as exc:
        raise InputError(
            f"{path}: the file is truncated or corrupt ({one_line(exc)}). Re-export or re-copy it."
        ) from exc
    dtype = np.dtype(image.get_data_dtype()).name
    proxy = image.dataobj
    if float(getattr(proxy, "slope", 1.0)) != 1.0 or float(getattr(proxy, "inter", 0.0)) != 0.0:
        # Scaled integers are not whole numbers once scaled: default to saving floats.
        dtype = "float32"
    affine = np.asarray(image.affine, dtype=np.float64)
    return np.asarray(array), affine, image.header.copy(), dtype


def read_itk(path: Path, suffix: str) -> tuple[np.ndarray, np.ndarray]:
    """Read a SimpleITK-supported file: voxels in ``[x, y, z, ...]`` order and a RAS+ affine.

    Images with fewer than three dimensions come back with an identity affine; the caller
    refuses them by their shape.

    Args:
        path: A ``.mha``, ``.mhd`` or ``.nrrd`` file that exists.
        suffix: Its image suffix, for the error message.

    Raises:
        InputError: If the file is truncated or corrupt, or its voxels are not scalars.
    """
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        # ITK's messages run over several lines with source locations; the last says why.
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        raise InputError(
            f"{path}: the file is truncated or corrupt, or not a {suffix} image "
            f"({one_line(lines[-1])}). Re-export or re-copy it."
        ) from exc
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"{path}: voxels have {image.GetNumberOfComponentsPerPixel()} components "
            "(colour or vector image); segrenorm reads single-channel volumes."
        )
    dim = image.GetDimension()
    # SimpleITK arrays are indexed [t, z, y, x]; reverse to the NIfTI-style [x, y, z, t].
    array = sitk.GetArrayFromImage(image).transpose(tuple(range(dim))[::-1])
    if dim < 3:
        return array, np.eye(4)  # refused as 2D by the caller
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[:3]
    origin = np.asarray(image.GetOrigin(), dtype=np.float64)[:3]
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    affine[:3, 3] = _LPS_TO_RAS @ origin
    return array, affine


# --------------------------------------------------------------------------- writing


def write_file(
    array: np.ndarray,
    path: Path,
    suffix: str,
    affine: np.ndarray,
    header: Any | None,
    *,
    is_label: bool,
    overwrite: bool,
) -> Path:
    """Write ``array`` atomically in the format its suffix calls for.

    Args:
        array: (X, Y, Z) voxels, already of the on-disk type.
        path: The output file.
        suffix: Its lower-case image suffix (``segrenorm.volumes.paths.image_suffix``).
        affine: (4, 4) RAS+ voxel-to-world matrix.
        header: The NIfTI header the volume was read with, or None.
        is_label: Mark a NIfTI file as a label map.
        overwrite: Replace existing files instead of refusing.
    """
    if suffix in NIFTI_SUFFIXES:
        return atomic_write(
            path, lambda tmp: write_nifti(array, tmp, affine, header, is_label), overwrite
        )
    return atomic_write(path, lambda tmp: write_itk(array, tmp, affine), overwrite)


def atomic_write(path: Path, write: Callable[[Path], None], overwrite: bool) -> Path:
    """Write a volume file (and its companions) atomically, refusing to replace files by default.

    Built on :func:`segrenorm.atomic.atomic_named_path`: ``write`` fills a file of the final
    name in a private folder beside ``path`` (a ``.mhd`` header names its ``.raw`` companion,
    so both must be written under their final names), then everything is moved into place.

    Args:
        path: The final file.
        write: Writes the file to the path it is given (same name as ``path``).
        overwrite: Replace existing files instead of refusing.

    Raises:
        InputError: If ``path`` is a folder, or it or a companion file exists and
            ``overwrite`` is False.
    """
    if path.is_dir():
        raise InputError(f"{path}: is a folder; give a file name to save to.")
    if path.exists() and not overwrite:
        raise InputError(
            f"{path}: the file already exists and segrenorm does not overwrite files. "
            "Choose another output path or pass overwrite=True."
        )
    with atomic_named_path(path, overwrite=overwrite) as tmp:
        write(tmp)
    return path


def write_nifti(
    array: np.ndarray, path: Path, affine: np.ndarray, source: Any | None, is_label: bool
) -> None:
    """Write ``array`` as NIfTI, reusing the source header when there is one.

    Args:
        array: (X, Y, Z) voxels, already of the on-disk type.
        path: The file to write (not atomic by itself: see :func:`atomic_write`).
        affine: (4, 4) RAS+ voxel-to-world matrix.
        source: The nibabel header the volume was read with, or None (ITK input).
        is_label: Mark the file as a label map and clear the intensity display window.
    """
    if isinstance(source, nib.Nifti1Header):
        header = source.copy()
        qcode, scode = int(header["qform_code"]), int(header["sform_code"])
        if qcode == 0 and scode == 0 and max_abs_diff(header.get_best_affine(), affine) > 1e-5:
            scode = 2  # the header's fallback affine is not ours: declare ours 'aligned'
    else:
        header = nib.Nifti1Header()
        header.set_xyzt_units("mm", "sec")
        qcode, scode = 1, 1  # ITK coordinates are scanner coordinates
    header.set_data_shape(array.shape)
    header.set_data_dtype(array.dtype)
    header.set_slope_inter(np.nan, np.nan)  # voxels are written as given, unscaled
    header.set_qform(affine, code=qcode)
    header.set_sform(affine, code=scode)
    if max_abs_diff(header.get_best_affine(), affine) > 1e-5:
        header.set_sform(affine, code=2)  # a sheared affine only survives in the sform
    if is_label:
        header.set_intent("label")
        header["cal_min"], header["cal_max"] = 0.0, 0.0  # intensity display window is stale
    cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    nib.save(cls(array, affine, header=header), str(path))


def write_itk(array: np.ndarray, path: Path, affine: np.ndarray) -> None:
    """Write ``array`` through SimpleITK (the suffix picks MetaImage or NRRD).

    Args:
        array: (X, Y, Z) voxels, already of the on-disk type.
        path: The file to write (not atomic by itself: see :func:`atomic_write`).
        affine: (4, 4) RAS+ voxel-to-world matrix; converted to ITK's LPS world.
    """
    matrix = affine[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = _LPS_TO_RAS @ matrix @ np.diag(1.0 / spacing)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in _LPS_TO_RAS @ affine[:3, 3]))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    sitk.WriteImage(image, str(path))
