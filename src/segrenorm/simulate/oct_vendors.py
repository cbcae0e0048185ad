"""Virtual OCT vendors: grid, contrast, optics, speckle, noise and stored range of a device.

An :class:`OctVendor` says how one SD-OCT device shows a retina; rendering itself is in
:mod:`segrenorm.simulate.oct_render` (:func:`~segrenorm.simulate.oct_render.render_oct`). The
built-in "Cirrus" and "Spectralis" are editable, commented YAML files in
``simulate/oct_profiles/``; :func:`load_vendor` finds them by name or loads a user's file, and
:func:`vendor_names` lists them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Self

import numpy as np

from segrenorm.errors import ConfigError
from segrenorm.simulate.profile_files import (
    check_fields,
    check_number,
    check_range,
    packaged_files,
    read_device_file,
)
from segrenorm.simulate.retina import FLUID_CLASSES, LAYER_NAMES

__all__ = ["OctVendor", "load_vendor", "vendor_names"]

_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
_MAX_LEVELS = int(np.iinfo(np.int16).max)  # scans are stored as int16
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_COMPRESSIONS = ("log", "power")
_FOLDER = "oct_profiles"
_FLUIDS = FLUID_CLASSES[1:]


@dataclass(frozen=True)
class OctVendor:
    """Grid, contrast, optics, speckle, noise and output range of one virtual OCT device.

    Reflectivities are relative intensities (linear, before compression; the RPE is about 1).

    Args:
        name: Vendor name, used as a folder name (letters, digits, ``.``, ``_``, ``-``).
        shape: Voxels ``(A-scans per B-scan, depth samples, B-scans)``.
        spacing: Voxel size in mm, same axis order.
        reflectivity: One value per region of :data:`~segrenorm.simulate.retina.LAYER_NAMES`,
            in that order (a mapping by region name in files).
        fluid: Reflectivity of IRF, SRF and PED (a mapping by class name in files).
        rolloff_mm: Sensitivity roll-off length: the signal at depth d is ``exp(-d / rolloff)``.
        psf_axial_um: Axial (depth) FWHM of the intensity point-spread function, in um.
        psf_lateral_um: Lateral FWHM (across A-scans and across B-scans), in um.
        speckle_looks: Independent frames averaged per B-scan (0: no speckle, a clean render).
        noise_floor: Mean intensity of the additive detector noise (0: none).
        compression: ``"log"`` (``levels * (1 + 10 log10(s) / dynamic_range_db)``) or
            ``"power"`` (``levels * s ** power``), ``s = gain * intensity`` clipped to [0, 1].
        dynamic_range_db: Decibels between the darkest and the brightest stored level (log).
        power: Exponent of the power-law compression.
        gain: Multiplies the intensity before compression (1 saturates an unattenuated RPE).
        levels: Largest stored integer (255 for 8-bit), at most 32767 (int16 storage).
        stripe: Relative depth-to-depth variation of the noise floor's mean, fixed per vendor
            (horizontal lines in the background), 0 for none.
    """

    name: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    reflectivity: tuple[float, ...]
    fluid: tuple[float, float, float]
    rolloff_mm: float = 2.0
    psf_axial_um: float = 5.0
    psf_lateral_um: float = 20.0
    speckle_looks: int = 1
    noise_floor: float = 5e-4
    compression: str = "log"
    dynamic_range_db: float = 45.0
    power: float = 0.25
    gain: float = 1.0
    levels: int = 255
    stripe: float = 0.0

    def __post_init__(self) -> None:
        where = f"OCT vendor {self.name!r}"
        if not isinstance(self.name, str) or not _SAFE_NAME.match(self.name):
            raise ConfigError(
                f"{where}: field 'name' must be a non-empty folder-safe name (letters, digits, "
                "'.', '_', '-'); rename the vendor"
            )
        object.__setattr__(self, "shape", _numbers(where, "shape", self.shape, 3, int, 1.0))
        object.__setattr__(self, "spacing", _numbers(where, "spacing", self.spacing, 3, float))
        for key, count in (("reflectivity", len(LAYER_NAMES)), ("fluid", len(_FLUIDS))):
            value = _numbers(where, key, getattr(self, key), count, float, 0.0, 100.0)
            object.__setattr__(self, key, value)
        for key in ("rolloff_mm", "psf_axial_um", "psf_lateral_um", "noise_floor",
                    "dynamic_range_db", "power", "gain", "stripe"):  # fmt: skip
            check_number(where, key, getattr(self, key), float)
        for key in ("speckle_looks", "levels"):
            check_number(where, key, getattr(self, key), int)
        check_range(where, "rolloff_mm", self.rolloff_mm, 1e-3, 1e6)
        check_range(where, "psf_axial_um", self.psf_axial_um, 0.0, 1000.0)
        check_range(where, "psf_lateral_um", self.psf_lateral_um, 0.0, 1000.0)
        check_range(where, "speckle_looks", self.speckle_looks, 0, 64)
        check_range(where, "noise_floor", self.noise_floor, 0.0, 1.0)
        check_range(where, "dynamic_range_db", self.dynamic_range_db, 1.0, 200.0)
        check_range(where, "power", self.power, 0.01, 1.0)
        check_range(where, "gain", self.gain, 1e-6, 1e6)
        check_range(where, "levels", self.levels, 1, _MAX_LEVELS)
        check_range(where, "stripe", self.stripe, 0.0, 1.0)
        if self.compression not in _COMPRESSIONS:
            raise ConfigError(
                f"{where}: field 'compression' = {self.compression!r} is unknown; use "
                f"{' or '.join(map(repr, _COMPRESSIONS))}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "OCT vendor") -> Self:
        """Build a vendor from a mapping (e.g. parsed YAML), naming any bad field.

        Args:
            data: Field names to values; ``reflectivity`` and ``fluid`` map region or class
                names to values (every name of ``LAYER_NAMES`` / IRF, SRF, PED, nothing else).
            source: Where the mapping came from, used in error messages (e.g. a file path).

        Returns:
            The validated vendor.

        Raises:
            ConfigError: On unknown or missing fields or names and on out-of-range values.
        """
        required = ("name", "shape", "spacing", "reflectivity", "fluid")
        data = check_fields(source, data, [f.name for f in fields(cls)], required)
        values = dict(data)
        values["reflectivity"] = _by_name(source, "reflectivity", data["reflectivity"], LAYER_NAMES)
        values["fluid"] = _by_name(source, "fluid", data["fluid"], _FLUIDS)
        try:
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Return the vendor as a JSON-serialisable dict that :meth:`from_dict` accepts."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["shape"] = list(self.shape)
        values["spacing"] = list(self.spacing)
        values["reflectivity"] = dict(zip(LAYER_NAMES, self.reflectivity, strict=True))
        values["fluid"] = dict(zip(_FLUIDS, self.fluid, strict=True))
        return values

    def clean(self) -> OctVendor:
        """The same device without speckle and without noise floor: its noise-free truth.

        Contrast, roll-off, blur, compression and gain are kept; it draws no random numbers.
        """
        return replace(self, speckle_looks=0, noise_floor=0.0)

    def scaled(self, factor: float) -> OctVendor:
        """The same field of view with each voxel count times ``factor`` (at least 8 per axis).

        Args:
            factor: Positive factor, e.g. 0.25 for the CPU demo.

        Returns:
            The vendor on the new grid (spacing divided accordingly).

        Raises:
            ConfigError: If ``factor`` is not a positive finite number.
        """
        if (
            isinstance(factor, bool)
            or not isinstance(factor, int | float)
            or not (math.isfinite(factor) and factor > 0)
        ):
            raise ConfigError(f"scale={factor!r} must be a positive number (1.0 is full size)")
        nx, ny, nz = (max(8, round(n * factor)) for n in self.shape)
        (ox, oy, oz), (sx, sy, sz) = self.shape, self.spacing
        return replace(self, shape=(nx, ny, nz), spacing=(ox * sx / nx, oy * sy / ny, oz * sz / nz))

    def sigmas(self) -> tuple[float, float, float]:
        """Intensity PSF standard deviations in voxels along ``(x, y, z)``."""
        lateral, axial = self.psf_lateral_um / 1000.0, self.psf_axial_um / 1000.0
        sx, sy, sz = self.spacing
        return (lateral / sx / _FWHM_PER_SIGMA, axial / sy / _FWHM_PER_SIGMA,
                lateral / sz / _FWHM_PER_SIGMA)  # fmt: skip


def _numbers(
    where: str,
    key: str,
    value: object,
    count: int,
    kind: type,
    low: float = 1e-9,
    high: float = 1e6,
) -> tuple[Any, ...]:
    if not isinstance(value, list | tuple) or len(value) != count:
        raise ConfigError(f"{where}: field {key!r} must hold {count} numbers, got {value!r}")
    items: tuple[object, ...] = tuple(value)
    for item in items:
        check_number(where, key, item, kind)
        check_range(where, key, item, low, high)
    return tuple(kind(item) for item in items)


def _by_name(source: str, key: str, value: object, names: tuple[str, ...]) -> tuple[object, ...]:
    if not isinstance(value, Mapping):
        return tuple(value) if isinstance(value, list | tuple) else (value,)
    unknown = sorted(set(value) - set(names))
    missing = [name for name in names if name not in value]
    if unknown or missing:
        raise ConfigError(
            f"{source}: field {key!r} must give exactly {', '.join(names)}; "
            f"unknown {unknown or 'none'}, missing {missing or 'none'}"
        )
    return tuple(value[name] for name in names)


def vendor_names() -> list[str]:
    """Every OCT vendor :func:`load_vendor` knows by name (the packaged files), sorted."""
    return sorted(packaged_files(_FOLDER))


def load_vendor(spec: str | Path | OctVendor) -> OctVendor:
    """Return a packaged vendor by name, or load one from a ``.yaml``/``.json`` file.

    Args:
        spec: A name from :func:`vendor_names` (``"Cirrus"``, ``"Spectralis"``), a path to a
            vendor file (a file without ``name`` is named after its stem), or a vendor.

    Returns:
        The vendor.

    Raises:
        ConfigError: If the name is unknown, the file cannot be parsed or a field is bad.
    """
    if isinstance(spec, OctVendor):
        return spec
    data, source = read_device_file(
        spec,
        packaged_files(_FOLDER),
        kind="OCT vendor",
        unknown=lambda name: (
            f"unknown OCT vendor {name!r}: use one of {', '.join(vendor_names())} "
            "or the path of an existing .yaml/.json vendor file"
        ),
    )
    return OctVendor.from_dict(data, source=source)
