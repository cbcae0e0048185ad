"""A physical, grid-free model of one retina with fluid pockets, and its exact rasterisation.

:func:`sample_retina` draws one virtual eye (:class:`RetinaParams`, all in mm, no grid);
:func:`rasterise` puts it on any :class:`OctGrid`, so the same eye on two vendors' grids is the
same anatomy (paired renders). Lateral positions ``(x, z)`` are mm from the fovea, which lies at
the lateral centre of every grid; depths are mm below the grid's depth centre inside the model
and mm below the top of the grid in a :class:`RetinaVolume`.

The anatomy, from the vitreous down (nine retinal layers, then choroid and sclera):

* **Thicknesses** away from the fovea (at 1 mm) are typical healthy-macula SD-OCT values
  (layer segmentation studies of normal eyes, e.g. Ooto et al., IOVS 2011): RNFL about 20 um
  temporally and thicker nasally toward the optic disc, GCL 45, IPL 37, INL 34, OPL 28, ONL 65
  (the thickest layer, thicker still under the fovea), IS 22, OS 30, RPE 18 um, a total
  ILM-to-Bruch's of 0.27-0.31 mm at 1 mm (drawn per subject; 0.25-0.33 with the variation).
  The subfoveal choroid is 0.18-0.38 mm (Margolis & Spaide 2009: 287 +- 76 um), thinner
  nasally.
* **Foveal pit**: the inner layers (RNFL to OPL) thin by a Gaussian of full width 0.6-1.0 mm at
  half depth to 5-20 % of their thickness at the centre, while the ONL thickens by 60-90 % and
  the outer segments lengthen; the centre is about 0.17-0.24 mm thick (about 0.22 measured).
* **Shape**: Bruch's membrane is a bowl (edges nearer the vitreous, curvature 0.004-0.015 /mm,
  as flattened by OCT scanning through the pupil) with a random tilt and a smooth random
  deformation; every layer's thickness carries its own smooth random variation (about 4 %).
* **Vessels**: two to five vessels in the RNFL/GCL arc around the fovea across the B-scans,
  0.05-0.14 mm wide; below each, light passes by Beer-Lambert over the chord through it, down
  to 0.3-0.6 under its centre.
* **Fluid**: see :mod:`segrenorm.simulate.retina_fluid` (IRF, SRF and PED pockets).

Example:
    >>> eye = sample_retina(np.random.default_rng(0))
    >>> volume = rasterise(eye, OctGrid((64, 128, 8), (0.08, 0.008, 0.8)))
    >>> volume.boundaries.shape
    (11, 64, 8)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segrenorm.errors import InputError
from segrenorm.simulate.retina_fluid import (
    FLUID_CLASSES,
    IRF,
    SRF,
    FluidPocket,
    FluidSettings,
    add_pocket,
    pocket_profile,
    sample_pockets,
)

__all__ = [
    "FLUID_CLASSES",
    "LAYER_NAMES",
    "FluidSettings",
    "OctGrid",
    "RetinaParams",
    "RetinaVolume",
    "SmoothField",
    "Vessel",
    "rasterise",
    "sample_retina",
]

#: Regions from the vitreous down; region ``k`` lies between boundaries ``k - 1`` and ``k``.
LAYER_NAMES: tuple[str, ...] = (
    "vitreous", "RNFL", "GCL", "IPL", "INL", "OPL", "ONL", "IS", "OS", "RPE", "choroid", "sclera",
)  # fmt: skip
_N_RETINA = 9  # RNFL .. RPE
# Thicknesses (mm) 1 mm from the fovea, before the per-subject scaling (see the module text).
_THICKNESS_MM = (0.020, 0.045, 0.037, 0.034, 0.028, 0.065, 0.022, 0.030, 0.018)
_INNER = 5  # RNFL .. OPL vanish in the pit
_ONL, _OS = 5, 7
_RNFL_NASAL_MM = 1.5  # distance over which the RNFL thickens toward the disc
_GAUSS_FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class OctGrid:
    """A voxel grid: axes ``(x, y, z)`` = (A-scan in a B-scan, depth, B-scan index).

    Args:
        shape: ``(n_ascans, n_depth, n_bscans)``.
        spacing: Voxel size in mm, same axis order.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1 or len(self.spacing) != 3:
            raise InputError(f"OctGrid: shape={self.shape!r} must be three positive counts")
        if not min(self.spacing) > 0:
            raise InputError(f"OctGrid: spacing={self.spacing!r} must be three sizes > 0 mm")

    def centres(self, axis: int) -> np.ndarray:
        """Voxel centres along a lateral axis (0 or 2), mm from the grid centre."""
        n, step = self.shape[axis], self.spacing[axis]
        return (np.arange(n) + 0.5 - n / 2.0) * step


@dataclass(frozen=True)
class RetinaVolume:
    """One eye rasterised on a grid (:func:`rasterise`).

    Args:
        boundaries: ``(len(LAYER_NAMES) - 1, X, Z)`` float32: depth (mm from the top of the grid)
            of each region boundary at each A-scan centre, non-decreasing in ``k``.
        fluid_fraction: ``(X, Y, Z)`` float32 in [0, 1]: partial volume of fluid.
        fluid_class: ``(X, Y, Z)`` uint8 1..3 where ``fluid_fraction > 0``, else 0.
        vessel_depth: ``(X, Z)`` float32 mm: depth below which a vessel shadows (inf: none).
        vessel_transmission: ``(X, Z)`` float32 in (0, 1]: light passing below it (1: none).
        labels: ``(X, Y, Z)`` uint8 0..3 fluid label map: the class where a pocket fills at
            least half a voxel (its largest such piece, should a pocket thinner than a voxel
            break into several), or else its most filled voxel: one component per pocket.
        grid: The grid (needed by :meth:`retina_mask`).
    """

    boundaries: np.ndarray
    fluid_fraction: np.ndarray
    fluid_class: np.ndarray
    vessel_depth: np.ndarray
    vessel_transmission: np.ndarray
    labels: np.ndarray
    grid: OctGrid | None = None

    def retina_mask(self) -> np.ndarray:
        """``(X, Y, Z)`` bool: voxel centres from the ILM down to Bruch's membrane, and fluid.

        Raises:
            InputError: If the volume was built without its grid.
        """
        if self.grid is None:
            raise InputError(
                "RetinaVolume has no grid, so voxel depths are unknown; build it with "
                "rasterise() or pass grid=OctGrid(...)"
            )
        step = self.grid.spacing[1]
        depth = ((np.arange(self.grid.shape[1]) + 0.5) * step)[None, :, None]
        inside = (depth >= self.boundaries[0][:, None, :]) & (
            depth <= self.boundaries[9][:, None, :]
        )
        # A PED lies below the lifted RPE; its fluid (and every other pocket) is retina too.
        return inside | (self.fluid_fraction > 0)


@dataclass(frozen=True)
class SmoothField:
    """A smooth random function of the lateral position: a sum of plane waves.

    Args:
        kx: Angular wave numbers along x, rad/mm.
        kz: Angular wave numbers along z, rad/mm.
        phase: Phases, rad.
        amplitude: Amplitudes.
    """

    kx: tuple[float, ...]
    kz: tuple[float, ...]
    phase: tuple[float, ...]
    amplitude: tuple[float, ...]

    @classmethod
    def draw(
        cls, rng: np.random.Generator, rms: float, wavelength_mm: tuple[float, float], n: int = 4
    ) -> SmoothField:
        """Draw ``n`` waves of random direction whose sum has root-mean-square ``rms``."""
        k = 2.0 * np.pi / rng.uniform(*wavelength_mm, n)
        direction = rng.uniform(0.0, 2.0 * np.pi, n)
        phase = rng.uniform(0.0, 2.0 * np.pi, n)
        amp = rms * math.sqrt(2.0 / n)  # a cosine's rms is amp / sqrt(2)
        return cls(
            tuple(float(v) for v in k * np.cos(direction)),
            tuple(float(v) for v in k * np.sin(direction)),
            tuple(float(v) for v in phase),
            (amp,) * n,
        )

    def __call__(self, x: np.ndarray, z: np.ndarray) -> np.ndarray:
        out = np.zeros(np.shape(x))
        for kx, kz, phase, amp in zip(self.kx, self.kz, self.phase, self.amplitude, strict=True):
            out += amp * np.cos(kx * x + kz * z + phase)
        return out


@dataclass(frozen=True)
class Vessel:
    """A retinal vessel: the curve ``v = offset + bend * u^2`` in axes rotated by ``angle``.

    Args:
        angle: Direction of the ``u`` axis in the ``(x, z)`` plane, rad.
        offset: Closest approach to the fovea, mm (signed).
        bend: Curvature term, 1/mm (same sign as ``offset``: it arcs around the fovea).
        radius_mm: Vessel radius.
        transmission: Light passing below its centre, in (0, 1).
        depth_fraction: Centre depth between the ILM (0) and the GCL's bottom (1).
    """

    angle: float
    offset: float
    bend: float
    radius_mm: float
    transmission: float
    depth_fraction: float


@dataclass(frozen=True)
class RetinaParams:
    """One virtual eye, in mm, independent of any grid (:func:`sample_retina`).

    Args:
        thickness_mm: Nine retinal layer thicknesses (RNFL .. RPE) at the reference profile.
        choroid_mm: Subfoveal choroid thickness.
        variation: Ten relative thickness fields (nine layers, then the choroid).
        nasal_sign: +1 if the nasal side (toward the optic disc) is at +x, else -1.
        rnfl_nasal_gain: Relative RNFL thickening on the nasal side.
        pit_width_mm: Full width at half depth of the foveal pit.
        pit_depth: Share of the inner layers missing at the pit centre.
        onl_gain: Relative ONL thickening at the fovea.
        os_gain: Relative outer-segment lengthening at the fovea.
        bruch_mm: Depth of Bruch's membrane at the fovea, mm below the grid centre.
        curvature: Bowl curvature ``(along x, along z)``, 1/mm.
        tilt: Depth slopes ``(along x, along z)``.
        deformation: Smooth random depth offset of the whole retina, mm.
        vessels: The vessels.
        pockets: The fluid pockets.
    """

    thickness_mm: tuple[float, ...]
    choroid_mm: float
    variation: tuple[SmoothField, ...]
    nasal_sign: int
    rnfl_nasal_gain: float
    pit_width_mm: float
    pit_depth: float
    onl_gain: float
    os_gain: float
    bruch_mm: float
    curvature: tuple[float, float]
    tilt: tuple[float, float]
    deformation: SmoothField
    vessels: tuple[Vessel, ...]
    pockets: tuple[FluidPocket, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description: every number of the eye, pockets with volumes."""
        out: dict[str, Any] = dict(vars(self))
        out["variation"] = [vars(v) for v in self.variation]
        out["vessels"] = [vars(v) for v in self.vessels]
        out["deformation"] = vars(self.deformation)
        out["pockets"] = [p.to_dict() for p in self.pockets]
        return out

    def pockets_summary(self) -> dict[str, dict[str, Any]]:
        """Per fluid class: ``{"count": n, "volumes_mm3": [...]}``."""
        return {
            name: {
                "count": sum(p.fluid_class == cls for p in self.pockets),
                "volumes_mm3": [p.volume_mm3 for p in self.pockets if p.fluid_class == cls],
            }
            for cls, name in enumerate(FLUID_CLASSES)
            if cls > 0
        }


def _layers(params: RetinaParams, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Layer thicknesses ``(10, *x.shape)`` (nine retinal layers and the choroid), mm."""
    r2 = x**2 + z**2
    sigma = params.pit_width_mm / _GAUSS_FWHM
    fovea = np.exp(-r2 / (2.0 * sigma**2))
    nasal = 0.5 * (1.0 + np.tanh(params.nasal_sign * x / _RNFL_NASAL_MM))
    out = np.empty((_N_RETINA + 1, *np.shape(x)))
    for k, base in enumerate(params.thickness_mm):
        shape = np.ones_like(r2)
        if k < _INNER:
            shape = 1.0 - params.pit_depth * fovea
        if k == 0:
            shape = shape * (1.0 + params.rnfl_nasal_gain * nasal)
        elif k == _ONL:
            shape = 1.0 + params.onl_gain * fovea
        elif k == _OS:
            shape = 1.0 + params.os_gain * fovea
        out[k] = base * shape
    # Thinner nasally by up to 10 % (the choroid thins toward the disc).
    out[_N_RETINA] = params.choroid_mm * (1.0 - 0.1 * np.tanh(params.nasal_sign * x / 2.0))
    for k, field in enumerate(params.variation):
        out[k] *= np.clip(1.0 + field(x, z), 0.0, None)
    return out


def _bruch(params: RetinaParams, x: np.ndarray, z: np.ndarray) -> np.ndarray:
    # The bowl: periphery nearer the vitreous (smaller depth) than the fovea.
    bowl = 0.5 * (params.curvature[0] * x**2 + params.curvature[1] * z**2)
    slope = params.tilt[0] * x + params.tilt[1] * z
    return params.bruch_mm - bowl + slope + params.deformation(x, z)


def _surfaces(
    params: RetinaParams, x: np.ndarray, z: np.ndarray, pockets: Sequence[FluidPocket]
) -> np.ndarray:
    """Boundary depths ``(11, *x.shape)`` (mm below the grid centre) lifted by the pockets."""
    thick = _layers(params, x, z)
    bruch = _bruch(params, x, z)
    out = np.empty((len(LAYER_NAMES) - 1, *np.shape(x)))
    out[10] = bruch + thick[_N_RETINA]
    depth = bruch
    for k in range(_N_RETINA - 1, -1, -1):  # boundary k is the bottom of region k + 1
        out[k + 1] = depth
        depth = depth - thick[k]
    out[0] = depth
    for pocket in pockets:
        if pocket.fluid_class == IRF:
            continue
        # SRF lifts everything above the RPE; PED lifts the RPE as well.
        top = 9 if pocket.fluid_class == SRF else 10
        out[:top] -= pocket_profile(pocket, x, z)
    return out


def sample_retina(rng: np.random.Generator, settings: FluidSettings | None = None) -> RetinaParams:
    """Draw one virtual eye with its vessels and fluid pockets.

    Args:
        rng: Random generator (the eye is a function of its state).
        settings: Fluid pocket counts and sizes (default :class:`FluidSettings`).

    Returns:
        The eye's parameters.
    """
    settings = FluidSettings() if settings is None else settings
    layer_factor = rng.uniform(0.9, 1.1, _N_RETINA)
    params = RetinaParams(
        thickness_mm=tuple(float(t) for t in np.array(_THICKNESS_MM) * layer_factor),
        choroid_mm=float(rng.uniform(0.18, 0.38)),
        variation=tuple(SmoothField.draw(rng, 0.04, (1.5, 6.0)) for _ in range(_N_RETINA + 1)),
        nasal_sign=1 if rng.random() < 0.5 else -1,
        rnfl_nasal_gain=float(rng.uniform(0.8, 1.4)),
        pit_width_mm=float(rng.uniform(0.6, 1.0)),
        pit_depth=float(rng.uniform(0.8, 0.95)),
        onl_gain=float(rng.uniform(0.6, 0.9)),
        os_gain=float(rng.uniform(0.2, 0.4)),
        bruch_mm=float(rng.uniform(0.05, 0.12)),
        curvature=(float(rng.uniform(0.004, 0.015)), float(rng.uniform(0.004, 0.015))),
        tilt=(float(rng.uniform(-0.01, 0.01)), float(rng.uniform(-0.01, 0.01))),
        deformation=SmoothField.draw(rng, 0.01, (2.0, 8.0)),
        vessels=(),
        pockets=(),
    )
    # Scale the retina to the drawn total thickness 1 mm from the fovea (variation aside).
    flat = RetinaParams(**{**vars(params), "variation": ()})
    total = float(_layers(flat, np.array(0.0), np.array(1.0))[:_N_RETINA].sum())
    scale = rng.uniform(0.27, 0.31) / total
    params = RetinaParams(
        **{**vars(params), "thickness_mm": tuple(t * scale for t in params.thickness_mm)}
    )
    vessels = []
    for _ in range(int(rng.integers(2, 6))):
        offset = float(rng.uniform(0.5, 2.0)) * (1 if rng.random() < 0.5 else -1)
        vessels.append(
            Vessel(
                angle=float(np.pi / 2 + rng.uniform(-0.6, 0.6)),  # mostly across B-scans
                offset=offset,
                bend=math.copysign(float(rng.uniform(0.0, 0.15)), offset),
                radius_mm=float(rng.uniform(0.025, 0.07)),
                transmission=float(rng.uniform(0.3, 0.6)),
                depth_fraction=float(rng.uniform(0.3, 0.6)),
            )
        )
    pockets = sample_pockets(rng, settings, lambda x, z, p: _surfaces(params, x, z, p))
    return RetinaParams(**{**vars(params), "vessels": tuple(vessels), "pockets": pockets})


def _shadows(
    params: RetinaParams, surfaces: np.ndarray, x: np.ndarray, z: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per A-scan: the shallowest vessel bottom (inf: none) and the product of transmissions."""
    depth = np.full(x.shape, np.inf)
    transmission = np.ones(x.shape)
    for vessel in params.vessels:
        cos, sin = math.cos(vessel.angle), math.sin(vessel.angle)
        u = x * cos + z * sin
        v = -x * sin + z * cos
        # Distance to the curve, to first order in its slope.
        distance = np.abs(v - vessel.offset - vessel.bend * u**2) / np.sqrt(
            1.0 + (2.0 * vessel.bend * u) ** 2
        )
        half = np.sqrt(np.clip(vessel.radius_mm**2 - distance**2, 0.0, None))
        hit = half > 0
        centre = surfaces[0] + vessel.depth_fraction * (surfaces[2] - surfaces[0])
        depth = np.where(hit, np.minimum(depth, centre + half), depth)
        # Beer-Lambert over the chord: the full diameter passes `transmission`.
        transmission *= vessel.transmission ** (half / vessel.radius_mm)
    return depth, transmission


def rasterise(
    params: RetinaParams, grid: OctGrid, settings: FluidSettings | None = None
) -> RetinaVolume:
    """Put an eye on a grid centred on its fovea (laterally) and on the depth window's centre.

    Args:
        params: The eye (:func:`sample_retina`).
        grid: The voxel grid.
        settings: Only ``max_lateral_samples`` is used (default :class:`FluidSettings`).

    Returns:
        Its boundaries, fluid partial volume, classes, labels and vessel shadows.
    """
    settings = FluidSettings() if settings is None else settings
    xx, zz = np.meshgrid(grid.centres(0), grid.centres(2), indexing="ij")
    surfaces = _surfaces(params, xx, zz, params.pockets)
    vessel_depth, transmission = _shadows(params, surfaces, xx, zz)
    top = grid.shape[1] * grid.spacing[1] / 2.0
    fraction = np.zeros(grid.shape, np.float32)
    classes = np.zeros(grid.shape, np.uint8)
    labels = np.zeros(grid.shape, np.uint8)
    for pocket in params.pockets:
        add_pocket(
            pocket,
            grid.shape,
            grid.spacing,
            lambda x, z: _surfaces(params, x, z, params.pockets),
            (fraction, classes, labels),
            settings.max_lateral_samples,
        )
    return RetinaVolume(
        boundaries=(surfaces + top).astype(np.float32),
        fluid_fraction=fraction,
        fluid_class=classes,
        vessel_depth=(vessel_depth + top).astype(np.float32),
        vessel_transmission=transmission.astype(np.float32),
        labels=labels,
        grid=grid,
    )
