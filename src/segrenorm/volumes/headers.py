"""Image headers, checked before any voxel is read: the grid a file declares, and whether the
file can hold it. NIfTI headers are read here, ITK formats in ``segrenorm.volumes.itk_headers``.

Used by ``segrenorm.volumes.formats``, which reads the voxels only once a header has passed
here. A header that declares an absurd grid (zero or negative sizes, more than 2**31 voxels,
more than one volume), a voxel size or affine that is zero, NaN or Inf, an unknown voxel type,
or more bytes than the file holds is refused with an :class:`~segrenorm.errors.InputError`
naming the file, so a corrupt 1 kB file never makes segrenorm allocate gigabytes.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener
from nibabel.spatialimages import HeaderDataError

from segrenorm.errors import InputError, one_line

#: The largest voxel count a header may declare (a 1290^3 volume; scans are ~10^7 voxels).
MAX_VOXELS = 2**31
#: What corrupt NIfTI files make nibabel (and the gzip and zlib modules under it) raise.
NIFTI_ERRORS = (
    ImageFileError,
    HeaderDataError,
    OSError,  # includes gzip.BadGzipFile
    EOFError,
    zlib.error,
    struct.error,
    ValueError,
    OverflowError,
)
# NIfTI datatype codes of real scalar voxels, and the numpy type each is read as.
_NIFTI_TYPES = {
    2: "uint8", 4: "int16", 8: "int32", 16: "float32", 64: "float64", 256: "int8",
    512: "uint16", 768: "uint32", 1024: "int64", 1280: "uint64",
}  # fmt: skip
# Deflate cannot compress better than 1032:1, so a .nii.gz never inflates beyond this.
_DEFLATE_MAX_RATIO = 1032
#: The end of every message about a header field that no valid file holds.
CORRUPT = "the header is corrupt; re-export or re-copy the file"


@dataclass(frozen=True, eq=False)
class HeaderInfo:
    """What a header declares, once checked.

    Args:
        shape: The declared grid, three sizes (a fourth of 1 for a one-volume 4D file).
        affine: (4, 4) voxel-to-world matrix in RAS+ mm, finite and non-singular.
        dtype: The voxel type to save with by default (``"float32"`` for scaled NIfTI integers).
        header: A copy of the nibabel header for NIfTI files, else None.
        fmt: ``"nifti"`` or ``"itk"``.
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    dtype: str
    header: Any | None
    fmt: str


def check_shape(path: Path, shape: tuple[int, ...]) -> None:
    """Refuse a declared grid that is empty, not one 3D volume, or absurdly large.

    Args:
        path: The file, for the message.
        shape: The sizes its header declares.

    Raises:
        InputError: If a size is zero or negative, the grid is not 3D (a 4D grid of one volume
            passes), or it holds more than :data:`MAX_VOXELS` voxels.
    """
    if any(n <= 0 for n in shape):
        raise InputError(
            f"{path}: the header declares the grid {shape}, with empty axes; {CORRUPT}."
        )
    if len(shape) != 3 and not (len(shape) == 4 and shape[3] == 1):
        raise InputError(
            f"{path}: the image is {len(shape)}D with shape {shape}; segrenorm needs one 3D "
            "volume per file. Split 4D series into volumes (e.g. fslsplit) and stack 2D slices "
            "into a volume."
        )
    count = math.prod(shape)
    if count > MAX_VOXELS:
        raise InputError(
            f"{path}: the header declares the grid {shape}, {count:,} voxels, more than the "
            f"{MAX_VOXELS:,} segrenorm reads; {CORRUPT}, or crop the volume."
        )


def check_affine(path: Path, affine: np.ndarray) -> None:
    """Refuse a voxel-to-world affine with NaN or Inf entries, or a singular one.

    Args:
        path: The file, for the message.
        affine: Its (4, 4) voxel-to-world matrix.

    Raises:
        InputError: If ``affine`` is not finite or its 3x3 part is singular.
    """
    if not np.all(np.isfinite(affine)):
        raise InputError(f"{path}: the voxel-to-world affine holds NaN or Inf; fix the header.")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: the voxel-to-world affine is singular; fix the header.")


def check_fits(path: Path, needed: int, available: int, where: str) -> None:
    """Refuse a file whose header declares more bytes than it holds.

    Args:
        path: The file, for the message.
        needed: Bytes the header declares (offset plus voxel data).
        available: Bytes that are there.
        where: What ``available`` counts, e.g. ``"the file holds"``.

    Raises:
        InputError: If ``needed`` exceeds ``available``.
    """
    if needed > available:
        raise InputError(
            f"{path}: the file is truncated or corrupt: its header declares {needed:,} bytes "
            f"of image but {where} {available:,}. Re-export or re-copy it."
        )


# --------------------------------------------------------------------------- NIfTI


def open_nifti(path: Path) -> nib.Nifti1Image:
    """Open a NIfTI file lazily after checking its header: no voxel is read.

    Args:
        path: An existing ``.nii`` or ``.nii.gz`` file.

    Returns:
        The nibabel image (NIfTI-1 or NIfTI-2); its ``dataobj`` is a proxy that reads on demand
        and the file is known to hold every byte it declares.

    Raises:
        InputError: If the file is not NIfTI, its header is corrupt or absurd (see
            :func:`check_shape`, :func:`check_affine`), or it is shorter than it declares.
    """
    gz = path.name.lower().endswith(".gz")
    try:
        raw = _raw_nifti_header(path)
        image = nib.load(str(path))
    except InputError:
        raise
    except NIFTI_ERRORS as exc:
        raise InputError(
            f"{path}: the file is truncated or corrupt, or not NIfTI ({one_line(exc)}). "
            "Re-export or re-copy it."
        ) from exc
    if not isinstance(image, nib.Nifti1Image):  # Nifti2Image subclasses it
        raise InputError(f"{path}: read as {type(image).__name__}, not NIfTI; convert it.")
    shape = tuple(int(n) for n in image.shape)
    check_shape(path, shape)
    affine = np.asarray(image.affine, dtype=np.float64)
    check_affine(path, affine)
    offset = int(cast(Any, image.dataobj).offset)  # the image's header copy says 0
    needed = offset + math.prod(shape) * np.dtype(_NIFTI_TYPES[int(raw["datatype"])]).itemsize
    if gz:
        _check_gzip_holds(path, needed)
    else:
        check_fits(path, needed, path.stat().st_size, "the file holds")
    return image


def nifti_info(path: Path, image: nib.Nifti1Image) -> HeaderInfo:
    """The checked declaration of an image from :func:`open_nifti`.

    Args:
        path: Its file.
        image: What :func:`open_nifti` returned for it.
    """
    dtype = np.dtype(image.get_data_dtype()).name
    proxy = image.dataobj
    if float(getattr(proxy, "slope", 1.0)) != 1.0 or float(getattr(proxy, "inter", 0.0)) != 0.0:
        # Scaled integers are not whole numbers once scaled: default to saving floats.
        dtype = "float32"
    affine = np.asarray(image.affine, dtype=np.float64)
    shape = tuple(int(n) for n in image.shape)
    return HeaderInfo(shape, affine, dtype, image.header.copy(), "nifti")


def _raw_nifti_header(path: Path) -> Any:
    """Read and check the header as stored, before nibabel fixes (hides) what is wrong in it."""
    with ImageOpener(str(path)) as fileobj:
        block = fileobj.read(540)
        if len(block) >= 348 and block[344:348] == b"n+1\x00":
            klass: Any = nib.Nifti1Header
            block = block[:348]
        elif len(block) == 540 and block[4:8] == b"n+2\x00":
            klass = nib.Nifti2Header
        else:
            raise InputError(
                f"{path}: the file is truncated or corrupt, or not NIfTI (no single-file NIfTI "
                "magic in its first bytes). Re-export or re-copy it."
            )
        header = klass.from_fileobj(io.BytesIO(block), check=False)
        ndim = int(header["dim"][0])
        if not 1 <= ndim <= 7:
            raise InputError(f"{path}: the header gives {ndim} dimensions (dim[0]); {CORRUPT}.")
        check_shape(path, tuple(int(n) for n in header["dim"][1 : ndim + 1]))
        code = int(header["datatype"])
        if code not in _NIFTI_TYPES:
            known = nib.nifti1.data_type_codes
            what = known.label[code] if code in known.value_set() else "unknown"
            raise InputError(
                f"{path}: voxel type {what} is not a real scalar type segrenorm reads (NIfTI "
                f"datatype code {code}); convert the image to integers or float32."
            )
        pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
        if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
            raise InputError(
                f"{path}: the voxel sizes (pixdim) {pixdim.tolist()} include 0, NaN or Inf; "
                "fix the header."
            )
        offset = float(header["vox_offset"])
        if not math.isfinite(offset) or offset < 0:
            raise InputError(f"{path}: the data offset (vox_offset) is {offset}; {CORRUPT}.")
        _check_extensions(path, fileobj, header, int(offset))
    return header


def _check_extensions(path: Path, fileobj: Any, header: Any, offset: int) -> None:
    """Refuse header extensions that run into the voxel data (nibabel would read their size)."""
    start = header.template_dtype.itemsize
    fileobj.seek(start)
    flag = fileobj.read(4)
    if len(flag) < 4 or flag[0:1] == b"\x00":
        return
    order = "<" if header.endianness == "<" else ">"
    position = start + 4
    while position + 16 <= offset:
        head = fileobj.read(8)
        if len(head) < 8:
            raise InputError(f"{path}: the file ends inside its header extensions; {CORRUPT}.")
        size = struct.unpack(f"{order}i", head[:4])[0]
        if size < 16 or position + size > offset:
            raise InputError(
                f"{path}: a header extension of {size} bytes runs past the data offset "
                f"{offset}; {CORRUPT}."
            )
        position += size
        fileobj.seek(position)


def _check_gzip_holds(path: Path, needed: int) -> None:
    """Refuse a ``.nii.gz`` that cannot inflate to ``needed`` bytes, reading as little as can be."""
    compressed = path.stat().st_size
    if compressed < 18:  # a gzip header and trailer alone take 18 bytes
        raise InputError(f"{path}: {compressed} bytes is too short for a gzip file; re-copy it.")
    check_fits(
        path,
        needed,
        compressed * _DEFLATE_MAX_RATIO,
        "even fully compressed, the file holds at most",
    )
    # The gzip trailer's ISIZE is the uncompressed size modulo 2**32: it bounds the size only
    # when the declared size is below 4 GiB (above, a larger file wraps around to any value).
    if needed >= 2**32:
        return
    with path.open("rb") as handle:
        handle.seek(-4, io.SEEK_END)
        isize = struct.unpack("<I", handle.read(4))[0]
    if isize >= needed:
        return
    # ISIZE is the last gzip member's size; a file of several members (bgzip) holds more. Count.
    check_fits(path, needed, _inflated_size(path, needed), "it inflates to")


def _inflated_size(path: Path, needed: int) -> int:
    """Bytes ``path`` inflates to, counting no further than ``needed``; keeps no output."""
    total = 0
    inflater = zlib.decompressobj(wbits=31)
    with path.open("rb") as handle:
        data = handle.read(1 << 16)
        while data and total < needed:
            try:
                total += len(inflater.decompress(data, 1 << 20))
            except zlib.error:
                break  # corrupt from here on: count what inflated
            if inflater.eof:  # the next gzip member, if any, starts in unused_data
                data = inflater.unused_data or handle.read(1 << 16)
                inflater = zlib.decompressobj(wbits=31)
            else:
                data = inflater.unconsumed_tail or handle.read(1 << 16)
    return total
