"""Lesion shapes for :mod:`segrenorm.simulate.lesions`, and their partial-volume sampling.

A shape (:class:`LesionShape`) is one or more ellipsoidal blobs at unit scale, optionally with
a smooth random radial perturbation; :func:`draw_shape` draws one (an ellipsoid, an irregular
ellipsoid or two to four merged blobs) and :func:`occupancy` samples scaled, placed shapes
every ``supersample_mm`` inside each voxel to give the occupied fraction of each voxel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SHAPES", "LesionShape", "draw_shape", "occupancy", "unit_vectors"]

#: Shape kinds, drawn with probabilities 0.4, 0.4, 0.2.
SHAPES: tuple[str, ...] = ("ellipsoid", "irregular", "blobs")
_SHAPE_WEIGHTS = (0.4, 0.4, 0.2)
_UNIT_GRID = 28  # points per axis of the grid that measures a shape's volume at unit scale


@dataclass(frozen=True)
class LesionShape:
    """One lesion shape at unit scale: blobs and a smooth radial perturbation.

    Args:
        shape: One of :data:`SHAPES`.
        offsets: (B, 3) blob centres, relative to the shape's centre.
        axes: (B, 3) blob semi-axes.
        rotations: (B, 3, 3) blob orientations (columns: the blob's axes).
        amplitude: Relative amplitude of the radial perturbation (0 for none).
        directions: (K, 3) unit vectors of the perturbation's waves.
        waves: (K, 3) weight, frequency and phase of each wave.
    """

    shape: str
    offsets: np.ndarray  # (B, 3) blob centres
    axes: np.ndarray  # (B, 3) blob semi-axes
    rotations: np.ndarray  # (B, 3, 3)
    amplitude: float
    directions: np.ndarray  # (K, 3) unit vectors of the radial perturbation
    waves: np.ndarray  # (K, 3) weight, frequency, phase

    @property
    def radius(self) -> float:
        """Radius of a ball around the centre that holds the shape."""
        reach = np.linalg.norm(self.offsets, axis=1) + self.axes.max(axis=1)
        return float(reach.max() * (1.0 + self.amplitude))

    def inside(self, points: np.ndarray) -> np.ndarray:
        """Which points (N, 3), relative to the centre at unit scale, lie in the shape."""
        hit = np.zeros(len(points), dtype=bool)
        for offset, axes, rotation in zip(self.offsets, self.axes, self.rotations, strict=True):
            local = (points - offset) @ rotation / axes  # rotate into the blob frame
            rho = np.sqrt(np.einsum("ij,ij->i", local, local))
            limit = 1.0
            if self.amplitude:
                unit = local / np.maximum(rho, 1e-9)[:, None]
                weight, freq, phase = self.waves.T
                wave = np.cos((unit @ self.directions.T) * freq + phase) @ weight
                limit = 1.0 + self.amplitude * wave
            hit |= rho <= limit
        return hit

    def unit_volume(self) -> float:
        """Volume of the shape at unit scale, measured on a regular grid."""
        r = self.radius
        step = 2 * r / _UNIT_GRID
        axis = -r + step * (np.arange(_UNIT_GRID) + 0.5)
        grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
        return float(self.inside(grid).sum()) * step**3


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    return np.asarray(q * np.sign(np.diag(r)))


def unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw ``n`` directions uniformly on the sphere, as an (n, 3) array."""
    v = rng.standard_normal((n, 3))
    return np.asarray(v / np.linalg.norm(v, axis=1, keepdims=True))


def draw_shape(rng: np.random.Generator) -> LesionShape:
    """Draw a shape kind and its blobs, axes, orientation and perturbation.

    Args:
        rng: Random generator.
    """
    shape = SHAPES[int(rng.choice(3, p=_SHAPE_WEIGHTS))]
    n_blobs = int(rng.integers(2, 5)) if shape == "blobs" else 1
    # Axes with geometric mean 1: aspect ratios up to about 2.5.
    axes = np.exp(np.clip(rng.normal(0.0, 0.25, (n_blobs, 3)), -0.45, 0.45))
    axes /= np.cbrt(axes.prod(axis=1, keepdims=True))
    offsets = np.zeros((n_blobs, 3))
    if n_blobs > 1:
        axes[1:] *= rng.uniform(0.5, 0.9, (n_blobs - 1, 1))
        offsets[1:] = unit_vectors(rng, n_blobs - 1) * rng.uniform(0.5, 1.0, (n_blobs - 1, 1))
    amplitude = float(rng.uniform(0.2, 0.45)) if shape == "irregular" else 0.0
    n_waves = 4
    weights = rng.uniform(0.5, 1.0, n_waves)
    waves = np.stack(
        [
            weights / weights.sum(),
            rng.uniform(1.5, 3.5, n_waves),
            rng.uniform(0, 2 * np.pi, n_waves),
        ],
        axis=1,
    )
    rotations = np.stack([_rotation(rng) for _ in range(n_blobs)])
    return LesionShape(
        shape, offsets, axes, rotations, amplitude, unit_vectors(rng, n_waves), waves
    )


def occupancy(
    parts: list[tuple[LesionShape, np.ndarray, float]],
    shape: tuple[int, int, int],
    zooms: tuple[float, float, float],
    supersample_mm: float,
) -> tuple[tuple[slice, slice, slice], np.ndarray] | None:
    """Occupied fraction of each voxel of the box around placed, scaled shapes.

    Args:
        parts: ``(shape, centre, scale)``: the centre in mm along the array axes (voxel ``i``
            at ``i * zoom``), the scale multiplying every length of the unit shape.
        shape: Grid shape.
        zooms: Voxel size in mm.
        supersample_mm: Spacing of the samples inside a voxel.

    Returns:
        ``(box, fraction)``: the voxel box holding the shapes, and the float32 occupied fraction
        of each of its voxels; None if the box lies outside the grid.
    """
    low = np.min([c - p.radius * s for p, c, s in parts], axis=0)
    high = np.max([c + p.radius * s for p, c, s in parts], axis=0)
    z = np.array(zooms)
    start = np.maximum(np.floor(low / z - 0.5).astype(int), 0)
    stop = np.minimum(np.ceil(high / z + 0.5).astype(int) + 1, shape)
    if np.any(stop <= start):
        return None
    sub = [max(1, round(zoom / supersample_mm)) for zoom in zooms]
    # Sample k of s inside voxel i sits at (i - 0.5 + (k + 0.5) / s) voxels.
    coords = [
        (np.arange(a, b)[:, None] - 0.5 + (np.arange(s)[None, :] + 0.5) / s).ravel() * zoom
        for a, b, s, zoom in zip(start, stop, sub, zooms, strict=True)
    ]
    grid = np.stack(np.meshgrid(*coords, indexing="ij"), axis=-1)
    fine_shape = grid.shape[:3]
    points = grid.reshape(-1, 3)
    hit = np.zeros(len(points), dtype=bool)
    for part, centre, scale in parts:
        hit |= part.inside((points - centre) / scale)
    n = stop - start
    fraction = hit.reshape(fine_shape).reshape(n[0], sub[0], n[1], sub[1], n[2], sub[2])
    box = (slice(start[0], stop[0]), slice(start[1], stop[1]), slice(start[2], stop[2]))
    return box, fraction.mean(axis=(1, 3, 5), dtype=np.float32)
