"""How many fluid pockets of each class a virtual retina gets, and how large (mm).

:class:`FluidSettings` is read by :mod:`segrenorm.simulate.retina_fluid`, which draws and
rasterises the pockets, and by ``segrenorm simulate oct``, which records it in
``simulation.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from segrenorm.errors import ConfigError

__all__ = ["FLUID_CLASSES", "IRF", "PED", "SRF", "FluidSettings"]

#: Fluid label values (the RETOUCH convention): index = label.
FLUID_CLASSES: tuple[str, ...] = ("background", "IRF", "SRF", "PED")
IRF, SRF, PED = 1, 2, 3


@dataclass(frozen=True)
class FluidSettings:
    """How many pockets of each class a subject gets and how large (mm).

    Args:
        irf_probability: Chance that a subject has any IRF (likewise ``srf_``, ``ped_``).
        irf_count: Inclusive range of the number of IRF pockets when it has some.
        irf_radius_mm: Range of the lateral semi-axes of an IRF ellipsoid.
        irf_height_mm: Range of its depth semi-axis (shrunk where the INL-ONL band is thinner).
        irf_confluent: Chance that an IRF pocket is two or three merged ellipsoids.
        srf_probability, srf_count, srf_radius_mm, srf_height_mm: The same for SRF lenses
            (the height is at the centre); ``ped_*``: for PED domes.
        field_mm: Full widths ``(x, z)`` of the central region that holds pocket centres (keep
            it inside every vendor's field of view, or pockets fall off a grid).
        min_gap_mm: Least separation ``(x, depth, z)``; two pockets are apart along one axis.
        max_lateral_samples: Most sub-voxel samples per lateral axis for partial volume.

    The defaults model a diseased cohort such as RETOUCH's (neovascular AMD and retinal vein
    occlusion: most scans show fluid of some class): cysts 0.1 to 0.5 mm wide, SRF lenses and
    PED domes up to 2 mm across and 0.4 to 0.5 mm high. Our modelling choice, not a fit to
    RETOUCH's fluid volumes.
    """

    irf_probability: float = 0.8
    irf_count: tuple[int, int] = (2, 8)
    irf_radius_mm: tuple[float, float] = (0.05, 0.25)
    irf_height_mm: tuple[float, float] = (0.02, 0.06)
    irf_confluent: float = 0.3
    srf_probability: float = 0.5
    srf_count: tuple[int, int] = (1, 2)
    srf_radius_mm: tuple[float, float] = (0.3, 1.0)
    srf_height_mm: tuple[float, float] = (0.05, 0.2)
    ped_probability: float = 0.5
    ped_count: tuple[int, int] = (1, 2)
    ped_radius_mm: tuple[float, float] = (0.25, 0.7)
    ped_height_mm: tuple[float, float] = (0.05, 0.25)
    field_mm: tuple[float, float] = (2.4, 4.8)
    min_gap_mm: tuple[float, float, float] = (0.12, 0.05, 1.2)
    max_lateral_samples: int = 8

    def __post_init__(self) -> None:
        for name in ("irf_probability", "srf_probability", "ped_probability", "irf_confluent"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"fluid: {name}={value!r} must be a probability in [0, 1]")
        for name in ("irf_count", "srf_count", "ped_count"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ConfigError(
                    f"fluid: {name}={(low, high)!r} must be a range (low, high) with "
                    "0 <= low <= high"
                )
        for name in (
            "irf_radius_mm", "irf_height_mm", "srf_radius_mm", "srf_height_mm",
            "ped_radius_mm", "ped_height_mm", "field_mm", "min_gap_mm",
        ):  # fmt: skip
            values = getattr(self, name)
            if min(values) <= 0:
                raise ConfigError(f"fluid: {name}={values!r} must hold positive sizes in mm")
            if ("radius" in name or "height" in name) and values[0] > values[1]:
                raise ConfigError(
                    f"fluid: {name}={values!r} must be a range (low, high) with low <= high"
                )
        if self.max_lateral_samples < 1:
            raise ConfigError(
                f"fluid: max_lateral_samples={self.max_lateral_samples!r} must be at least 1"
            )

    def for_class(self, cls: int) -> tuple[Any, ...]:
        """``(probability, count, radius_mm, height_mm)`` of one class (1 IRF, 2 SRF, 3 PED)."""
        key = FLUID_CLASSES[cls].lower()
        fields = ("probability", "count", "radius_mm", "height_mm")
        return tuple(getattr(self, f"{key}_{field}") for field in fields)
