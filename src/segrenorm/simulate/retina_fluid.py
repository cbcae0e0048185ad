"""Fluid pockets of a virtual retina: IRF cysts, SRF lenses and PED domes, grid-free.

Every pocket is, at each lateral point ``(x, z)`` (mm from the fovea), one depth interval:

* **IRF** (intraretinal fluid): one ellipsoid, or two or three confluent ellipsoids sharing a
  centre depth (so their depth intervals nest and the union is still one interval), placed
  inside the INL-ONL band; it sets the fluid fraction only.
* **SRF** (subretinal fluid): a lens of height ``H (1 - rho^2)`` between the photoreceptor outer
  segments and the RPE; everything above the RPE moves up by that height.
* **PED** (pigment-epithelial detachment): a dome of height ``H sqrt(1 - rho^2)`` between the
  lifted RPE and Bruch's membrane; everything down to the RPE moves up by that height.

``rho``: elliptical radius of a rotated lateral ellipse (semi-axes ``a``, ``c``). Any two pockets
are :attr:`FluidSettings.min_gap_mm` apart along x, depth or z, so on grids with voxels under a
third of those gaps the label map's connected components are the pockets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from segrenorm.simulate.fluid_settings import FLUID_CLASSES, IRF, PED, SRF, FluidSettings

__all__ = [
    "FLUID_CLASSES",
    "IRF",
    "PED",
    "SRF",
    "FluidPocket",
    "FluidSettings",
    "PocketPart",
    "add_pocket",
    "pocket_interval",
    "pocket_profile",
    "sample_pockets",
]

Range = tuple[float, float]
# Boundary rows (see retina.LAYER_NAMES) that place pockets.
_INL_TOP, _ELM, _OS_BOTTOM, _RPE_BOTTOM = 3, 6, 8, 9
_ATTEMPTS = 30
_FOOTPRINT_SAMPLES = 9  # per axis, to find a pocket's depth extent before any grid exists
_DEPTH_SLACK_MM = 0.005  # depth extents between those samples
_CUBE = np.ones((3, 3, 3), bool)  # 26-connectivity
#: ``surfaces(x, z, pockets)``: lifted boundary depths ``(11, *x.shape)``, mm below grid centre.
Surfaces = Callable[[np.ndarray, np.ndarray, Sequence["FluidPocket"]], np.ndarray]


@dataclass(frozen=True)
class PocketPart:
    """One lateral ellipse of a pocket (mm, relative to the fovea).

    Args:
        x: Centre along the A-scan axis.
        z: Centre across B-scans.
        a: Semi-axis along the direction ``angle``.
        c: Semi-axis across it.
        angle: Rotation of the ellipse in the ``(x, z)`` plane, radians.
        height: IRF: the depth semi-axis; SRF, PED: the height at the centre.
    """

    x: float
    z: float
    a: float
    c: float
    angle: float
    height: float

    def rho2(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Squared elliptical radius at lateral points (1 on the rim)."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        dx, dz = x - self.x, z - self.z
        u = dx * cos + dz * sin
        v = -dx * sin + dz * cos
        return (u / self.a) ** 2 + (v / self.c) ** 2

    def half_widths(self) -> tuple[float, float]:
        """Half-extents of the rotated ellipse along x and z."""
        cos, sin = math.cos(self.angle), math.sin(self.angle)
        return (math.hypot(self.a * cos, self.c * sin), math.hypot(self.a * sin, self.c * cos))


@dataclass(frozen=True)
class FluidPocket:
    """One fluid pocket: one connected component of the label map.

    Args:
        fluid_class: 1 IRF, 2 SRF, 3 PED.
        parts: Its lateral ellipses (several only for a confluent IRF pocket).
        depth: IRF: centre depth, mm below the grid centre; SRF, PED: ``None`` (they sit on
            the anatomy).
        volume_mm3: Its volume (analytic, or integrated finely for a confluent pocket).
    """

    fluid_class: int
    parts: tuple[PocketPart, ...]
    depth: float | None
    volume_mm3: float

    def lateral_box(self) -> tuple[float, float, float, float]:
        """``(x_low, x_high, z_low, z_high)`` in mm."""
        boxes = []
        for part in self.parts:
            hx, hz = part.half_widths()
            boxes.append((part.x - hx, part.x + hx, part.z - hz, part.z + hz))
        return (
            min(b[0] for b in boxes),
            max(b[1] for b in boxes),
            min(b[2] for b in boxes),
            max(b[3] for b in boxes),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record: class, centre, sizes (mm) and volume (mm^3)."""
        first = self.parts[0]
        return {
            "class": FLUID_CLASSES[self.fluid_class],
            "centre_mm": [first.x, first.z],
            "depth_mm": self.depth,
            "parts": [
                {"x": p.x, "z": p.z, "a": p.a, "c": p.c, "angle": p.angle, "height": p.height}
                for p in self.parts
            ],
            "volume_mm3": self.volume_mm3,
        }


def pocket_profile(pocket: FluidPocket, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Thickness function at lateral points: IRF half-chord, SRF/PED height (0 outside).

    Args:
        pocket: The pocket.
        x: Lateral positions, mm.
        z: Positions across B-scans, mm (same shape).

    Returns:
        float64 array of the shape of ``x``.
    """
    out = np.zeros(np.shape(x))
    for part in pocket.parts:
        room = np.clip(1.0 - part.rho2(x, z), 0.0, None)
        # A lens tapers (1 - rho^2); a dome and an ellipsoid are round (sqrt).
        shape = room if pocket.fluid_class == SRF else np.sqrt(room)
        out = np.maximum(out, part.height * shape)
    return out


def pocket_interval(
    pocket: FluidPocket, x: np.ndarray, z: np.ndarray, surfaces: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Depth interval ``[top, bottom]`` (mm) that the pocket fills at lateral points.

    Args:
        pocket: The pocket.
        x: Lateral positions, mm.
        z: Positions across B-scans, mm.
        surfaces: The lifted boundaries there, ``(11, *x.shape)``.

    Returns:
        ``(top, bottom)``; empty (``top == bottom``) outside the pocket.
    """
    size = pocket_profile(pocket, x, z)
    if pocket.fluid_class == IRF:
        assert pocket.depth is not None
        return pocket.depth - size, pocket.depth + size
    # The lifted layer's bottom is the pocket's top; the pocket fills the height left below.
    row = _OS_BOTTOM if pocket.fluid_class == SRF else _RPE_BOTTOM
    return surfaces[row], surfaces[row] + size


def _volume(cls: int, parts: tuple[PocketPart, ...]) -> float:
    p = parts[0]
    if cls == SRF:
        return math.pi * p.a * p.c * p.height / 2.0  # integral of H (1 - rho^2)
    if cls == PED:
        return 2.0 * math.pi * p.a * p.c * p.height / 3.0  # half an ellipsoid
    if len(parts) == 1:
        return 4.0 * math.pi * p.a * p.c * p.height / 3.0
    # Confluent: integrate the union's chord on a fine lateral grid.
    pocket = FluidPocket(IRF, parts, 0.0, 0.0)
    x0, x1, z0, z1 = pocket.lateral_box()
    n = 400
    xs = np.linspace(x0, x1, n, endpoint=False) + (x1 - x0) / (2 * n)
    zs = np.linspace(z0, z1, n, endpoint=False) + (z1 - z0) / (2 * n)
    xx, zz = np.meshgrid(xs, zs, indexing="ij")
    area = (x1 - x0) * (z1 - z0) / n**2
    return float(2.0 * pocket_profile(pocket, xx, zz).sum() * area)


def _footprint(pocket: FluidPocket) -> tuple[np.ndarray, np.ndarray]:
    x0, x1, z0, z1 = pocket.lateral_box()
    t = np.linspace(0.0, 1.0, _FOOTPRINT_SAMPLES)
    xx, zz = np.meshgrid(x0 + t * (x1 - x0), z0 + t * (z1 - z0), indexing="ij")
    centres = np.array([[p.x, p.z] for p in pocket.parts])
    return np.concatenate([xx.ravel(), centres[:, 0]]), np.concatenate([zz.ravel(), centres[:, 1]])


def _box(pocket: FluidPocket, surfaces: np.ndarray, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """``(3, 2)`` extents (x, depth, z) of a pocket, depth from samples of its interval."""
    top, bottom = pocket_interval(pocket, x, z, surfaces)
    inside = bottom > top
    x0, x1, z0, z1 = pocket.lateral_box()
    return np.array(
        [
            [x0, x1],
            [top[inside].min() - _DEPTH_SLACK_MM, bottom[inside].max() + _DEPTH_SLACK_MM],
            [z0, z1],
        ]
    )


def _apart(box: np.ndarray, others: list[np.ndarray], gap: tuple[float, float, float]) -> bool:
    for other in others:
        separated = any(
            box[k, 0] - other[k, 1] >= gap[k] or other[k, 0] - box[k, 1] >= gap[k] for k in range(3)
        )
        if not separated:
            return False
    return True


def _part(rng: np.random.Generator, x: float, z: float, radius: Range, height: Range) -> PocketPart:
    a, c = rng.uniform(*radius), rng.uniform(*radius)
    return PocketPart(x, z, a, c, rng.uniform(0, math.pi), rng.uniform(*height))


def _draw_parts(
    rng: np.random.Generator, settings: FluidSettings, cls: int
) -> tuple[PocketPart, ...]:
    _, _, radius, height = settings.for_class(cls)
    x = rng.uniform(-0.5, 0.5) * settings.field_mm[0]
    z = rng.uniform(-0.5, 0.5) * settings.field_mm[1]
    first = _part(rng, x, z, radius, height)
    parts = [first]
    if cls == IRF and rng.random() < settings.irf_confluent:
        cos, sin = math.cos(first.angle), math.sin(first.angle)
        for _ in range(int(rng.integers(1, 3))):
            # A centre inside the first ellipse keeps the union connected.
            r, phi = rng.uniform(0.5, 0.8), rng.uniform(0, 2 * math.pi)
            u, v = first.a * r * math.cos(phi), first.c * r * math.sin(phi)
            parts.append(_part(rng, x + u * cos - v * sin, z + u * sin + v * cos, radius, height))
    return tuple(parts)


def _place_irf(
    rng: np.random.Generator,
    parts: tuple[PocketPart, ...],
    surfaces: np.ndarray,
    x: np.ndarray,
    z: np.ndarray,
) -> FluidPocket | None:
    """Give IRF parts a centre depth inside the INL-ONL band over their whole footprint."""
    for _ in range(4):
        probe = FluidPocket(IRF, parts, 0.0, 0.0)
        size = pocket_profile(probe, x, z)
        inside = size > 0
        low = float((surfaces[_INL_TOP] + size)[inside].max())
        high = float((surfaces[_ELM] - size)[inside].min())
        if low < high:
            return FluidPocket(IRF, parts, float(rng.uniform(low, high)), _volume(IRF, parts))
        # The band is too thin here: flatten the cyst and try again.
        parts = tuple(PocketPart(p.x, p.z, p.a, p.c, p.angle, 0.7 * p.height) for p in parts)
    return None


def sample_pockets(
    rng: np.random.Generator, settings: FluidSettings, surfaces: Surfaces
) -> tuple[FluidPocket, ...]:
    """Draw a subject's pockets: PED, then SRF (they lift the layers), then IRF.

    Args:
        rng: Random generator.
        settings: Counts, sizes and gaps.
        surfaces: The anatomy's lifted boundaries (see :data:`Surfaces`).

    Returns:
        The pockets; a pocket that finds no free place in 30 draws is left out.
    """
    counts = {}
    for cls in (PED, SRF, IRF):
        probability, (low, high), _, _ = settings.for_class(cls)
        present = rng.random() < probability
        counts[cls] = int(rng.integers(low, high + 1)) if present else 0
    pockets: list[FluidPocket] = []
    boxes: list[np.ndarray] = []
    for cls in (PED, SRF, IRF):
        for _ in range(counts[cls]):
            for _ in range(_ATTEMPTS):
                parts = _draw_parts(rng, settings, cls)
                probe = FluidPocket(cls, parts, 0.0, _volume(cls, parts))
                x, z = _footprint(probe)
                lifted = surfaces(x, z, pockets)
                pocket = _place_irf(rng, parts, lifted, x, z) if cls == IRF else probe
                if pocket is None:
                    continue
                if cls != IRF:
                    pocket = FluidPocket(cls, parts, None, pocket.volume_mm3)
                # Its own lift moves the anatomy it sits on: measure it lifted.
                box = _box(pocket, surfaces(x, z, [*pockets, pocket]), x, z)
                if _apart(box, boxes, settings.min_gap_mm):
                    pockets.append(pocket)
                    boxes.append(box)
                    break
    return tuple(pockets)


def add_pocket(
    pocket: FluidPocket,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    lifted: Callable[[np.ndarray, np.ndarray], np.ndarray],
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray],
    limit: int,
) -> None:
    """Add one pocket's partial volume (exact in depth, sampled laterally) to a grid's arrays.

    Args:
        pocket: The pocket.
        shape: Grid shape ``(X, Y, Z)``; the fovea at the lateral centre.
        spacing: Voxel size, mm.
        lifted: Lifted boundaries ``(11, *x.shape)`` at lateral points, mm below the centre.
        arrays: ``(fluid_fraction, fluid_class, labels)``, updated in place.
        limit: Most sub-voxel samples per lateral axis.
    """
    (nx, ny, nz), (sx, sy, sz) = shape, spacing
    fraction, classes, labels = arrays
    x0, x1, z0, z1 = pocket.lateral_box()
    i0, i1 = max(0, math.floor(x0 / sx + nx / 2)), min(nx, math.ceil(x1 / sx + nx / 2))
    k0, k1 = max(0, math.floor(z0 / sz + nz / 2)), min(nz, math.ceil(z1 / sz + nz / 2))
    if i0 >= i1 or k0 >= k1:
        return  # outside this grid's field of view
    smallest = min(min(p.a, p.c) for p in pocket.parts)
    mx = int(min(limit, max(1, math.ceil(4 * sx / smallest))))
    mz = int(min(limit, max(1, math.ceil(4 * sz / smallest))))
    # Sub-voxel sample positions: (I, mx) and (K, mz), mm from the fovea.
    xs = (np.arange(i0, i1) - nx / 2)[:, None] * sx + (np.arange(mx) + 0.5) * (sx / mx)
    zs = (np.arange(k0, k1) - nz / 2)[:, None] * sz + (np.arange(mz) + 0.5) * (sz / mz)
    xx = np.broadcast_to(xs[:, :, None, None], (i1 - i0, mx, k1 - k0, mz))
    zz = np.broadcast_to(zs[None, None, :, :], xx.shape)
    top, bottom = pocket_interval(pocket, xx, zz, lifted(xx, zz))
    top, bottom = top + ny * sy / 2.0, bottom + ny * sy / 2.0  # below the top of the grid
    filled = bottom > top
    j0 = max(0, math.floor(top[filled].min() / sy)) if filled.any() else ny
    j1 = min(ny, math.ceil(bottom[filled].max() / sy)) if filled.any() else 0
    if j0 >= j1:
        return  # above or below the depth window
    own = np.zeros((i1 - i0, j1 - j0, k1 - k0))
    for j in range(j0, j1):
        # Exact depth overlap of [top, bottom] with the voxel's depth extent.
        overlap = np.clip(np.minimum(bottom, (j + 1) * sy) - np.maximum(top, j * sy), 0, None)
        own[:, j - j0, :] = overlap.mean(axis=(1, 3)) / sy
    box = (slice(i0, i1), slice(j0, j1), slice(k0, k1))
    before = fraction[box]
    # Should two pockets share a voxel (closer than a voxel), the fuller one names it.
    classes[box] = np.where(own > before, pocket.fluid_class, classes[box])
    fraction[box] = np.minimum(before + own, 1.0)
    mine = labels[box]  # a view: writes go to the label map
    # Half-filled plateaus (a pocket thinner than a voxel) must not flicker on rounding.
    half = own >= 0.5 - 1e-6
    if half.any():
        parts, n = ndimage.label(half, _CUBE)
        if n > 1:
            # Keep the largest piece, so that every pocket is one component of the label map.
            half = parts == 1 + int(np.argmax(ndimage.sum(half, parts, range(1, n + 1))))
        mine[half] = pocket.fluid_class
    elif own.max() > 0:
        # A sub-voxel pocket still appears: its most filled voxel.
        mine[np.unravel_index(int(own.argmax()), own.shape)] = pocket.fluid_class
