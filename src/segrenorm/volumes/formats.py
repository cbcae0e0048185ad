"""File formats behind :mod:`segrenorm.volumes.readwrite`: NIfTI through nibabel, MetaImage/NRRD
through SimpleITK.

Used by ``segrenorm.volumes.readwrite``, which validates what these functions read and decides
what they write. Headers are checked (``segrenorm.volumes.headers``) before any voxel is read.
Affines are RAS+ millimetres (NIfTI convention) and arrays are indexed ``[x, y, z, ...]``; ITK's
LPS world and ``[z, y, x]`` arrays are converted at this boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from segrenorm.atomic import atomic_named_path
from segrenorm.errors import InputError, one_line
from segrenorm.volumes.headers import NIFTI_ERRORS, HeaderInfo, nifti_info, open_nifti
from segrenorm.volumes.images import max_abs_diff
from segrenorm.volumes.itk_headers import LPS_TO_RAS, itk_error, open_itk

NIFTI_SUFFIXES = (".nii", ".nii.gz")


# --------------------------------------------------------------------------- reading


def read_header(path: Path, suffix: str) -> HeaderInfo:
    """Read and check the grid a file declares, reading no voxel.

    Args:
        path: An existing image file.
        suffix: Its lower-case image suffix (``segrenorm.volumes.paths.image_suffix``).

    Raises:
        InputError: If the header is corrupt or absurd (``segrenorm.volumes.headers``) or the
            file is shorter than it declares.
    """
    if suffix in NIFTI_SUFFIXES:
        return nifti_info(path, open_nifti(path))
    return open_itk(path, suffix)[1]


def read_file(path: Path, suffix: str) -> tuple[np.ndarray, HeaderInfo]:
    """Read any supported file with the library its suffix calls for, header checked first.

    Args:
        path: An existing image file.
        suffix: Its lower-case image suffix (``segrenorm.volumes.paths.image_suffix``).

    Returns:
        ``(array, info)``: voxels in ``[x, y, z, ...]`` order (NIfTI scaled by
        scl_slope/scl_inter) and what the header declares (:func:`read_header`).

    Raises:
        InputError: If the header is refused, or the file is truncated, corrupt or not of its
            suffix's format.
    """
    if suffix in NIFTI_SUFFIXES:
        image = open_nifti(path)
        info = nifti_info(path, image)
        try:
            # nibabel reads lazily: a cut .nii.gz only fails once the voxels are decompressed.
            array = np.asarray(np.asanyarray(image.dataobj))
        except (*NIFTI_ERRORS, MemoryError) as exc:
            raise _corrupt(path, exc) from exc
        return array, info
    reader, info = open_itk(path, suffix)
    try:
        itk_image = reader.Execute()
    except RuntimeError as exc:
        raise itk_error(path, suffix, exc) from exc
    except MemoryError as exc:
        raise _corrupt(path, exc) from exc
    # SimpleITK arrays are indexed [t, z, y, x]; reverse to the NIfTI-style [x, y, z, t].
    array = sitk.GetArrayFromImage(itk_image)
    return array.transpose(tuple(range(array.ndim))[::-1]), info


def _corrupt(path: Path, exc: BaseException) -> InputError:
    return InputError(
        f"{path}: the file is truncated or corrupt ({one_line(exc) or type(exc).__name__}). "
        "Re-export or re-copy it."
    )


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
    direction = LPS_TO_RAS @ matrix @ np.diag(1.0 / spacing)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(v) for v in LPS_TO_RAS @ affine[:3, 3]))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))
    sitk.WriteImage(image, str(path))
