"""Tests of segrenorm.volumes.images: the geometry a volume carries."""

from __future__ import annotations

import numpy as np
import pytest

from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes.images import Geometry

SHAPE = (8, 9, 10)


def oblique_affine() -> np.ndarray:
    """A rotated, x-flipped, anisotropic affine with an offset."""
    angle = np.deg2rad(20.0)
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
    ) @ np.diag([-1.2, 0.9, 2.5])
    affine[:3, 3] = [40.0, -12.5, 7.25]
    return affine


def test_geometry_spacing_and_axis_codes_come_from_the_affine() -> None:
    geometry = Geometry.from_affine(oblique_affine(), SHAPE, dtype="int16")
    np.testing.assert_allclose(geometry.spacing, (1.2, 0.9, 2.5))
    assert geometry.axcodes == ("L", "A", "S")
    assert geometry.shape == SHAPE and geometry.dtype == "int16" and geometry.fmt == "nifti"


def test_geometry_validates_and_freezes_its_affine() -> None:
    with pytest.raises(InputError, match=r"expected a 4x4 affine and a 3D shape, got \(3, 3\)"):
        Geometry.from_affine(np.eye(3), SHAPE)
    with pytest.raises(InputError, match=r"is not a finite 4x4 matrix"):
        Geometry(np.full((4, 4), np.nan), SHAPE, (1.0, 1.0, 1.0), "float32", ("R", "A", "S"))
    with pytest.raises(ConfigError, match=r"geometry format 'dicom' is unknown"):
        Geometry.from_affine(np.eye(4), SHAPE, fmt="dicom")
    geometry = Geometry.from_affine(oblique_affine(), SHAPE)
    with pytest.raises(ValueError, match="read-only"):
        geometry.affine[0, 0] = 1.0
    moved = Geometry.from_affine(oblique_affine() + 2e-3, SHAPE)
    assert geometry.matches(Geometry.from_affine(oblique_affine() + 5e-4, SHAPE))
    assert not geometry.matches(moved)
