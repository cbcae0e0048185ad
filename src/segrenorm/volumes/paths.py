"""Image files on disk: the supported suffixes, file stems, and expanding inputs into files.

Example:
    >>> image_suffix("sub-01_T1w.nii.gz"), image_stem("sub-01_T1w.nii.gz")
    ('.nii.gz', 'sub-01_T1w')
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from segrenorm.errors import InputError

__all__ = ["SUPPORTED_SUFFIXES", "find_images", "image_stem", "image_suffix"]

SUPPORTED_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd")


def image_suffix(path: str | Path) -> str:
    """Return the lower-case image suffix of ``path``, e.g. ``".nii.gz"`` or ``".mha"``.

    Args:
        path: A file name or path.

    Raises:
        InputError: If the suffix is not one of :data:`SUPPORTED_SUFFIXES`.
    """
    name = Path(path).name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    raise InputError(
        f"{path}: not a supported image file; the name must end in one of "
        f"{', '.join(SUPPORTED_SUFFIXES)}. Convert it to NIfTI first."
    )


def image_stem(path: str | Path) -> str:
    """Return the file name of ``path`` without its image suffix (``sub-01.nii.gz`` → ``sub-01``).

    Args:
        path: A file name or path with a supported suffix.
    """
    name = Path(path).name
    return name[: len(name) - len(image_suffix(path))]


def find_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand files, folders (non-recursive) and glob patterns into a sorted list of images.

    Args:
        inputs: Image files, folders holding images, or glob patterns such as ``"data/*.nii.gz"``.

    Raises:
        InputError: If ``inputs`` is empty, a path is missing, a file has an unsupported suffix,
            or a folder or pattern holds no supported image.
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    if not inputs:
        raise InputError("no input images given; pass image files, folders or glob patterns")
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_file():
            image_suffix(path)
            matches = [path]
        elif path.is_dir():
            matches = sorted(p for p in path.iterdir() if p.is_file() and _is_image(p))
            if not matches:
                raise InputError(
                    f"{path}: the folder holds no image ({', '.join(SUPPORTED_SUFFIXES)}); "
                    "point to the folder that holds the volumes."
                )
        elif any(char in str(item) for char in "*?["):
            hits = glob.glob(os.path.expanduser(str(item)))
            matches = sorted(Path(p) for p in hits if Path(p).is_file() and _is_image(Path(p)))
            if not matches:
                raise InputError(
                    f"{item}: the pattern matches no image ({', '.join(SUPPORTED_SUFFIXES)}); "
                    "check the pattern and quote it so the shell does not expand it."
                )
        else:
            raise InputError(f"{path}: no such file or folder; check the path.")
        found.extend(m for m in matches if m not in found)
    return found


def _is_image(path: Path) -> bool:
    name = path.name.lower()
    return not name.startswith(".") and any(
        name.endswith(s) and len(name) > len(s) for s in SUPPORTED_SUFFIXES
    )
