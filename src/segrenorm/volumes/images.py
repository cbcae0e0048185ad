"""Volumes in memory: the grid a volume lives on, intensity images and label maps.

Every volume carries a :class:`Geometry` (a RAS+ voxel-to-world affine, NIfTI convention) so
that whatever segrenorm writes lands on the grid it was read from. Reading and writing files is
``segrenorm.volumes.readwrite``'s job.

Example:
    >>> geometry = Geometry.from_affine(np.eye(4), (4, 5, 6))
    >>> geometry.spacing, geometry.axcodes
    ((1.0, 1.0, 1.0), ('R', 'A', 'S'))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from segrenorm.errors import ConfigError, InputError

__all__ = ["Geometry", "LabelMap", "ScalarImage", "max_abs_diff"]

_AFFINE_ATOL = 1e-3  # mm; below any scanner's reporting precision, above float32 round-off


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference between two arrays of one shape, as a float.

    Args:
        a: First array.
        b: Second array.
    """
    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - b)))


@dataclass(frozen=True, eq=False)
class Geometry:
    """Where a volume's voxels lie in the world, and how it was stored.

    Args:
        affine: (4, 4) voxel-to-world matrix in RAS+ millimetres (NIfTI convention).
        shape: Voxel grid size (X, Y, Z).
        spacing: Voxel size along each voxel axis in mm (the affine's column norms).
        dtype: On-disk voxel type name, e.g. ``"int16"``; the default type when saving
            (``"float32"`` for NIfTI integers stored with a scl_slope/scl_inter scaling).
        axcodes: Orientation of the voxel axes, e.g. ``("R", "A", "S")``.
        header: A copy of the nibabel header for NIfTI input, else None.
        fmt: ``"nifti"`` or ``"itk"``: the format family the volume came from.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    dtype: str
    axcodes: tuple[str, str, str]
    header: Any | None = None
    fmt: str = "nifti"

    def __post_init__(self) -> None:
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
            raise InputError(f"affine {self.affine!r} is not a finite 4x4 matrix")
        affine.setflags(write=False)  # a frozen geometry must not move under the volumes using it
        object.__setattr__(self, "affine", affine)
        if self.fmt not in ("nifti", "itk"):
            raise ConfigError(f"geometry format {self.fmt!r} is unknown; use 'nifti' or 'itk'")

    @classmethod
    def from_affine(
        cls,
        affine: np.ndarray,
        shape: Sequence[int],
        *,
        dtype: str = "float32",
        header: Any | None = None,
        fmt: str = "nifti",
    ) -> Geometry:
        """Build a geometry whose spacing and axis codes are derived from ``affine``.

        Args:
            affine: (4, 4) voxel-to-world matrix (RAS+ mm).
            shape: Voxel grid size, three integers.
            dtype: On-disk voxel type to use when saving.
            header: Optional nibabel header to reuse when writing NIfTI.
            fmt: ``"nifti"`` or ``"itk"``.
        """
        matrix = np.asarray(affine, dtype=np.float64)
        if matrix.shape != (4, 4) or len(shape) != 3:
            raise InputError(f"expected a 4x4 affine and a 3D shape, got {matrix.shape}, {shape}")
        spacing = np.linalg.norm(matrix[:3, :3], axis=0)
        codes = nib.aff2axcodes(matrix)
        return cls(
            affine=matrix,
            shape=(int(shape[0]), int(shape[1]), int(shape[2])),
            spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
            dtype=np.dtype(dtype).name,
            axcodes=(str(codes[0]), str(codes[1]), str(codes[2])),
            header=header,
            fmt=fmt,
        )

    def matches(self, other: Geometry, *, atol: float = _AFFINE_ATOL) -> bool:
        """Whether ``other`` has the same voxel grid: same shape, affines within ``atol`` mm.

        Args:
            other: The geometry to compare with.
            atol: Largest tolerated difference of any affine entry, in mm.
        """
        return self.shape == other.shape and max_abs_diff(self.affine, other.affine) <= atol


@dataclass
class ScalarImage:
    """An intensity volume, float32 in memory.

    Args:
        data: (X, Y, Z) float32 intensities.
        geometry: The grid the intensities live on.
        path: The file it was read from, if any.
    """

    data: np.ndarray
    geometry: Geometry
    path: Path | None = None


@dataclass
class LabelMap:
    """An integer segmentation: never intensity-scaled, only resampled nearest-neighbour.

    Args:
        data: (X, Y, Z) uint8 class indices (int16 when a value exceeds 255).
        geometry: The grid the labels live on.
        path: The file it was read from, if any.
    """

    data: np.ndarray
    geometry: Geometry
    path: Path | None = None
