"""Virtual MRI scanners: what makes the same anatomy look different on two machines.

A :class:`ScannerProfile` turns tissue probability maps into a T1-weighted image in five
steps, each one a known source of multi-site variation:

1. partial-volume tissue mixture with scanner-specific tissue intensities (contrast),
   modulated by the relative texture of the real template so regions are not flat;
2. an optional intensity non-linearity (gamma) around the white-matter level;
3. a multiplicative, smooth random bias field (receive-coil inhomogeneity);
4. anisotropic Gaussian blur (in-plane resolution and slice thickness);
5. Rician noise, the magnitude of complex Gaussian noise, scaled to output units.

Profiles are plain frozen dataclasses; :data:`SCANNERS` holds the built-in pair "1.5T"/"3T".
A second pair, "1T"/"7T", ships as editable YAML files in this package's ``profiles/`` folder,
as do the three FLAIR scanners "SA", "SV" and "PI" of ``segrenorm simulate flair``: a profile
with a ``lesion`` intensity also renders a lesion map, which replaces white matter in step 1;
:func:`load_scanner` finds a scanner by either name or loads a user's YAML/JSON file, and
:func:`scanner_names` lists every name it knows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Self

import numpy as np
from scipy import ndimage

from segrenorm.errors import ConfigError
from segrenorm.simulate.profile_files import (
    check_fields,
    check_number,
    check_range,
    packaged_files,
    read_device_file,
)

__all__ = [
    "SCANNERS",
    "ScannerProfile",
    "apply_scanner",
    "load_scanner",
    "scanner_names",
    "smooth_random_fields",
]

# FWHM = 2 sqrt(2 ln 2) sigma for a Gaussian point-spread function.
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
# The largest tissue intensity times ``scale`` must leave int16 headroom for bias and noise.
_MAX_OUTPUT_LEVEL = 16000.0
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Packaged profile files, found by name (their stem) through importlib so zipped installs work.
_PROFILE_FOLDER = "profiles"


@dataclass(frozen=True)
class ScannerProfile:
    """Intensity, resolution and noise characteristics of one virtual scanner.

    Tissue intensities are relative (white matter is usually 1.0); ``scale`` maps them to
    stored integer units, so two sites can also differ by a global gain.

    Args:
        name: Site name, used as a folder name (letters, digits, ``.``, ``_``, ``-``).
        csf: Mean intensity of cerebrospinal fluid, relative units, >= 0.
        gm: Mean intensity of grey matter, relative units, >= 0.
        wm: Mean intensity of white matter, relative units, > 0.
        bias_amplitude: Standard deviation of the log bias field (0.2 is about +-20 %).
        bias_smoothness_mm: Spacing of the bias field's control points in mm; larger is
            smoother.
        fwhm_inplane_mm: Extra Gaussian blur FWHM within each slice, in mm (0 for none).
        fwhm_through_mm: Extra Gaussian blur FWHM across slices (slice thickness), in mm.
        slice_axis: Array axis that is the slice direction (2 is axial on the MNI grid).
        noise: Rician noise sigma as a fraction of the white-matter intensity.
        gamma: Intensity non-linearity ``wm * (s / wm) ** gamma``; 1.0 is linear.
        texture: Weight of the template's relative fine texture (0 gives flat tissues).
        scale: Output units per relative unit (white matter of 1.0 stores as ``scale``).
        lesion: Mean intensity of white-matter lesions, relative units, >= 0 (``lesion / wm``
            is the lesion-to-WM ratio); None (the default) for a scanner that renders no
            lesions. :meth:`to_dict` leaves it out when None.

    Example:
        >>> ScannerProfile(name="7T", csf=0.2, gm=0.5, wm=1.0, noise=0.03).noise
        0.03
    """

    name: str
    csf: float
    gm: float
    wm: float
    bias_amplitude: float = 0.1
    bias_smoothness_mm: float = 60.0
    fwhm_inplane_mm: float = 0.0
    fwhm_through_mm: float = 0.0
    slice_axis: int = 2
    noise: float = 0.02
    gamma: float = 1.0
    texture: float = 1.0
    scale: float = 1000.0
    lesion: float | None = None

    def __post_init__(self) -> None:
        where = f"scanner profile {self.name!r}"
        if not isinstance(self.name, str) or not _SAFE_NAME.match(self.name):
            raise ConfigError(
                f"{where}: field 'name' must be a non-empty folder-safe name (letters, digits, "
                "'.', '_', '-'); rename the scanner"
            )
        for key in (f.name for f in fields(self) if f.name != "name"):
            value = getattr(self, key)
            if key == "lesion" and value is None:
                continue
            check_number(where, key, value, int if key == "slice_axis" else float)
        check_range(where, "csf", self.csf, 0.0, _MAX_OUTPUT_LEVEL)
        check_range(where, "gm", self.gm, 0.0, _MAX_OUTPUT_LEVEL)
        check_range(where, "wm", self.wm, 1e-6, _MAX_OUTPUT_LEVEL)
        check_range(where, "bias_amplitude", self.bias_amplitude, 0.0, 1.0)
        check_range(where, "bias_smoothness_mm", self.bias_smoothness_mm, 1.0, 1000.0)
        check_range(where, "fwhm_inplane_mm", self.fwhm_inplane_mm, 0.0, 50.0)
        check_range(where, "fwhm_through_mm", self.fwhm_through_mm, 0.0, 50.0)
        check_range(where, "slice_axis", self.slice_axis, 0, 2)
        check_range(where, "noise", self.noise, 0.0, 1.0)
        check_range(where, "gamma", self.gamma, 0.1, 10.0)
        check_range(where, "texture", self.texture, 0.0, 3.0)
        check_range(where, "scale", self.scale, 1e-6, math.inf)
        if self.lesion is not None:
            check_range(where, "lesion", self.lesion, 0.0, _MAX_OUTPUT_LEVEL)
        peak = self.scale * max(self.csf, self.gm, self.wm, self.lesion or 0.0)
        if peak > _MAX_OUTPUT_LEVEL:
            raise ConfigError(
                f"{where}: field 'scale' ({self.scale}) times the brightest tissue gives {peak:g},"
                f" which leaves no int16 headroom; keep it under {_MAX_OUTPUT_LEVEL:g}"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "scanner profile") -> Self:
        """Build a profile from a mapping (e.g. parsed YAML), naming any bad field.

        Args:
            data: Field names to values; ``name``, ``csf``, ``gm`` and ``wm`` are required.
            source: Where the mapping came from, used in error messages (e.g. a file path).

        Returns:
            The validated profile.

        Raises:
            ConfigError: On unknown or missing fields and on out-of-range values.
        """
        data = check_fields(
            source, data, [f.name for f in fields(cls)], ("name", "csf", "gm", "wm")
        )
        try:
            return cls(**dict(data))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """Return the profile as a JSON-serialisable dict that :meth:`from_dict` accepts.

        A ``lesion`` of None is left out, so profiles without lesions keep their old form.
        """
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in values.items() if not (k == "lesion" and v is None)}

    def clean(self) -> ScannerProfile:
        """The same scanner without noise and without bias field: its noise-free truth.

        Contrast, gamma, texture, blur and gain are kept, so the result is what this scanner
        would show of a subject if it added no random error; it draws no random numbers.

        Example:
            >>> SCANNERS["3T"].clean().noise, SCANNERS["3T"].clean().fwhm_through_mm
            (0.0, 1.0)
        """
        return replace(self, noise=0.0, bias_amplitude=0.0)


#: Built-in scanners. "1.5T" has lower grey/white contrast (a gamma under 1 compresses it
#: further), a stronger bias field, thick slices and ~5 % noise; "3T" has higher contrast, a
#: mild bias field and ~2 % noise. Their ``scale`` differs too, as gains do between vendors.
SCANNERS: dict[str, ScannerProfile] = {
    "1.5T": ScannerProfile(
        name="1.5T",
        csf=0.34,
        gm=0.68,
        wm=1.0,
        bias_amplitude=0.18,
        bias_smoothness_mm=60.0,
        fwhm_inplane_mm=2.0,
        fwhm_through_mm=5.0,
        noise=0.05,
        gamma=0.85,
        scale=800.0,
    ),
    "3T": ScannerProfile(
        name="3T",
        csf=0.22,
        gm=0.55,
        wm=1.0,
        bias_amplitude=0.06,
        bias_smoothness_mm=90.0,
        fwhm_inplane_mm=0.0,
        fwhm_through_mm=1.0,
        noise=0.02,
        gamma=1.0,
        scale=1000.0,
    ),
}


def scanner_names() -> list[str]:
    """Every scanner :func:`load_scanner` knows by name: :data:`SCANNERS` and packaged files.

    Returns:
        The names, sorted.
    """
    return sorted({*SCANNERS, *packaged_files(_PROFILE_FOLDER)})


def load_scanner(spec: str | Path) -> ScannerProfile:
    """Return a scanner by name (built-in or packaged), or load one from a ``.yaml``/``.json`` file.

    Names are looked up first in :data:`SCANNERS`, then among the package's ``profiles/`` files
    (e.g. ``"7T"``); anything else is a path. A file without a ``name`` field takes its name
    from the file stem.

    Args:
        spec: A name from :func:`scanner_names` (e.g. ``"3T"``) or a path to a profile file.

    Returns:
        The scanner profile.

    Raises:
        ConfigError: If the name is unknown, the file cannot be parsed or a field is bad.
    """
    if isinstance(spec, str) and spec in SCANNERS:
        return SCANNERS[spec]
    data, source = read_device_file(
        spec,
        packaged_files(_PROFILE_FOLDER),
        kind="scanner profile",
        unknown=lambda name: (
            f"unknown scanner {name!r}: use one of {', '.join(scanner_names())} "
            "or the path of an existing .yaml/.json profile file"
        ),
    )
    return ScannerProfile.from_dict(data, source=source)


def smooth_random_fields(
    shape: tuple[int, ...],
    zooms: tuple[float, ...],
    spacing_mm: float,
    rng: np.random.Generator,
    count: int = 1,
) -> np.ndarray:
    """Draw smooth random fields with zero mean and unit standard deviation.

    Each field is a sum of Gaussian bumps on a coarse control grid, built separably (one small
    matrix per axis), so it costs far less than smoothing full-resolution noise.

    Args:
        shape: Output grid shape (3 axes).
        zooms: Voxel size in mm per axis.
        spacing_mm: Distance between control points in mm (the correlation length).
        rng: Random generator that supplies the control-point weights.
        count: Number of independent fields.

    Returns:
        float32 array of shape ``(count, *shape)``.
    """
    bases = []
    for n, zoom in zip(shape, zooms, strict=True):
        extent = n * zoom
        # One extra knot beyond each edge so the field has no edge fall-off.
        knots = np.arange(-spacing_mm, extent + 2 * spacing_mm, spacing_mm)
        positions = (np.arange(n) + 0.5) * zoom
        basis = np.exp(-0.5 * ((positions[:, None] - knots[None, :]) / spacing_mm) ** 2)
        bases.append(basis.astype(np.float32))
    weights = rng.standard_normal((count, *(b.shape[1] for b in bases)), dtype=np.float32)
    field = np.einsum("nabc,ia,jb,kc->nijk", weights, *bases, optimize=True)
    # The field is smooth, so a sparse subsample estimates its moments well and is cheap.
    sample = field[:, ::3, ::3, ::3].astype(np.float64)
    mean = sample.mean(axis=(1, 2, 3))
    std = np.maximum(sample.std(axis=(1, 2, 3)), 1e-12)
    field -= mean.astype(np.float32)[:, None, None, None]
    field /= std.astype(np.float32)[:, None, None, None]
    return field


def apply_scanner(
    csf: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    texture: np.ndarray,
    scanner: ScannerProfile,
    zooms: tuple[float, float, float],
    rng: np.random.Generator,
    *,
    lesion: np.ndarray | None = None,
) -> np.ndarray:
    """Render tissue probability maps as a T1-weighted image on one scanner.

    With a ``lesion`` map the scanner's ``lesion`` intensity joins the mixture: pass as ``wm``
    the white matter the lesions leave (``wm - lesion``), so that lesions replace it.

    Args:
        csf: CSF probability map, float32 (X, Y, Z).
        gm: Grey-matter probability map, same shape.
        wm: White-matter probability map, same shape.
        texture: Relative fine texture (0 means none), same shape.
        scanner: The scanner to simulate.
        zooms: Voxel size in mm, used for the blur and bias-field scales.
        rng: Random generator for the bias field and noise.
        lesion: Lesion (partial-volume) probability map, same shape, or None for none.

    Returns:
        float32 image in output units (white matter around ``scanner.wm * scanner.scale``).

    Raises:
        ConfigError: If a lesion map is given to a scanner without a ``lesion`` intensity.
    """
    image = scanner.csf * csf + scanner.gm * gm + scanner.wm * wm
    if lesion is not None:
        if scanner.lesion is None:
            raise ConfigError(
                f"scanner profile {scanner.name!r} has no 'lesion' intensity, so it cannot "
                "render lesions; add a 'lesion' field (e.g. the SA, SV or PI profiles)"
            )
        image += np.float32(scanner.lesion) * lesion
    if scanner.texture:
        image *= 1.0 + np.float32(scanner.texture) * texture
    if scanner.gamma != 1.0:
        # Around the WM level so the bias-free WM intensity, and so the noise level, stay put.
        image = np.float32(scanner.wm) * (np.maximum(image, 0.0) / np.float32(scanner.wm)) ** (
            np.float32(scanner.gamma)
        )
    if scanner.bias_amplitude:
        log_bias = smooth_random_fields(image.shape, zooms, scanner.bias_smoothness_mm, rng)[0]
        image *= np.exp(np.float32(scanner.bias_amplitude) * log_bias)
    sigmas = [scanner.fwhm_inplane_mm / _FWHM_PER_SIGMA / z for z in zooms]
    sigmas[scanner.slice_axis] = (
        scanner.fwhm_through_mm / _FWHM_PER_SIGMA / zooms[scanner.slice_axis]
    )
    if any(s > 0 for s in sigmas):
        image = ndimage.gaussian_filter(image, sigmas, mode="nearest", truncate=3.0)
    image *= np.float32(scanner.scale)
    if scanner.noise:
        sigma = np.float32(scanner.noise * scanner.wm * scanner.scale)
        real = rng.standard_normal(image.shape, dtype=np.float32)
        real *= sigma
        real += image
        imag = rng.standard_normal(image.shape, dtype=np.float32)
        imag *= sigma
        image = np.hypot(real, imag)
    return image.astype(np.float32, copy=False)
