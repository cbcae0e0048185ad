"""Bias-field correction: SimpleITK's N4, masked, on a shrunken copy for speed.

MRI intensities carry a smooth multiplicative field from coil sensitivity; it differs between
scanners and is the largest single error of the built-in 1.5T scanner. N4 (Tustison et al.,
IEEE TMI 2010) fits ``log v = log u + log b`` with a B-spline ``log b``. The field is fitted on
the volume shrunk by ``shrink`` along each axis (shrink 4 costs ~1/64 of the full fit) and then
evaluated on the full grid, so the correction ``u = v / b`` keeps the input's resolution. N4
leaves the field's overall scale free; it is fixed to a geometric mean of 1 inside the mask, so
corrected volumes stay in their scanner's units.

SimpleITK's filter is used as it is (the field's standard implementation); this module only
fixes its parameters in one frozen, serialisable object that the slice cache's manifest and
every checkpoint carry, so training and harmonization correct the same way. OCT and images that
were already corrected take ``method="none"``.

Example:
    >>> import numpy as np
    >>> flat = BiasCorrection(method="none")
    >>> flat.apply(np.ones((4, 4, 4), np.float32), (1.0, 1.0, 1.0), None).max()
    np.float32(1.0)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from segrenorm.errors import ConfigError, InputError

__all__ = [
    "BIAS_METHODS",
    "DEFAULT_BIAS_CORRECTION",
    "NO_BIAS_CORRECTION",
    "BiasCorrection",
    "shrink_factors",
]

#: ``n4``: SimpleITK's N4; ``none``: intensities pass through unchanged.
BIAS_METHODS: tuple[str, ...] = ("n4", "none")


@dataclass(frozen=True)
class BiasCorrection:
    """How volumes are bias-corrected before scaling.

    Args:
        method: ``"n4"`` or ``"none"``.
        shrink: the field is fitted on the volume shrunk by this factor along each axis
            (1 = full resolution; 2 to 4 is the usual trade of speed against detail).
        iterations: N4 iterations at each fitting level (one level per entry).
        control_points: B-spline control points per axis at the first level.
        convergence: N4's convergence threshold.
        threads: worker threads of the filter; 1 (the default) gives the same bits on every
            machine, None lets SimpleITK use all cores.
    """

    method: str = "n4"
    shrink: int = 4
    iterations: tuple[int, ...] = (50, 50, 30)
    control_points: int = 4
    convergence: float = 1e-3
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.method not in BIAS_METHODS:
            raise ConfigError(
                f"bias correction {self.method!r} is unknown: use one of {', '.join(BIAS_METHODS)}"
            )
        try:  # JSON and the command line give numbers of any type: store them as declared
            shrink, points = _whole(self.shrink), _whole(self.control_points)
            iterations = tuple(_whole(n) for n in self.iterations)
            convergence = float(self.convergence)
            threads = None if self.threads is None else _whole(self.threads)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"bias correction {self!r} holds a non-numeric value ({exc})"
            ) from None
        if not 1 <= shrink <= 8:
            raise ConfigError(f"bias-correction shrink={self.shrink} must be 1 to 8")
        if not iterations or min(iterations) < 1:
            raise ConfigError(
                f"bias-correction iterations={list(iterations)} must be one positive "
                "count per fitting level"
            )
        if points < 4:
            raise ConfigError(
                f"bias-correction control_points={self.control_points} must be >= 4 "
                "(spline order 3 + 1)"
            )
        if not (np.isfinite(convergence) and convergence > 0):
            raise ConfigError(f"bias-correction convergence={self.convergence} must be > 0")
        if threads is not None and threads < 1:
            raise ConfigError(f"bias-correction threads={self.threads} must be >= 1 or None")
        for name, value in (
            ("shrink", shrink),
            ("iterations", iterations),
            ("control_points", points),
            ("convergence", convergence),
            ("threads", threads),
        ):
            object.__setattr__(self, name, value)

    @property
    def enabled(self) -> bool:
        """Whether :meth:`apply` changes intensities."""
        return self.method != "none"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in manifests and checkpoints."""
        data = dataclasses.asdict(self)
        data["iterations"] = list(self.iterations)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> BiasCorrection:
        """Read :meth:`to_dict`'s form; None (a cache or checkpoint from before bias
        correction existed) means ``method="none"``.

        Raises:
            ConfigError: unknown keys or invalid values.
        """
        if data is None:
            return cls(method="none")
        if not isinstance(data, Mapping):
            raise ConfigError(f"bias correction must be a mapping of its settings, got {data!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"bias correction: unknown key(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        values = dict(data)
        if "iterations" in values:
            if isinstance(values["iterations"], (str, bytes)) or not isinstance(
                values["iterations"], Sequence
            ):
                raise ConfigError(
                    f"bias-correction iterations={values['iterations']!r} must be a list of "
                    "counts, one per fitting level"
                )
            values["iterations"] = tuple(values["iterations"])
        return cls(**values)

    def apply(
        self, data: np.ndarray, spacing: Sequence[float], mask: np.ndarray | None
    ) -> np.ndarray:
        """Correct a volume; returns a new float32 array of the same shape.

        The field is normalised to a geometric mean of 1 inside the mask, so corrected
        intensities stay in the scanner's units (a site's typical scale stays meaningful).

        Args:
            data: (X, Y, Z) intensities (any real dtype).
            spacing: voxel size in mm along X, Y, Z.
            mask: where the field is fitted (the head or brain); None fits everywhere.

        Raises:
            InputError: the volume is not 3D or is thinner than 2 voxels along an axis, the
                spacing is not three positive numbers, the mask does not match the volume
                or is empty (also once shrunk), or intensities inside it are not finite.
        """
        arr = np.asarray(data, dtype=np.float32)
        if not self.enabled:
            return arr.copy()
        if arr.ndim != 3 or min(arr.shape) < 2:
            raise InputError(
                f"bias correction needs a 3D volume at least 2 voxels along each axis, got "
                f"shape {arr.shape}; use bias correction none (--bias-correction none) for it"
            )
        sizes = tuple(float(s) for s in spacing)
        if len(sizes) != 3 or not all(np.isfinite(s) and s > 0 for s in sizes):
            raise InputError(
                f"bias correction: voxel spacing {tuple(spacing)} must be three positive mm"
            )
        if mask is None:
            inside = np.ones(arr.shape, dtype=bool)
        else:
            inside = np.asarray(mask).astype(bool)
            if inside.shape != arr.shape or not inside.any():
                raise InputError(
                    f"bias correction: the mask {inside.shape} must match the volume "
                    f"{arr.shape} and hold at least one voxel"
                )
        if not np.isfinite(arr[inside]).all():
            raise InputError(
                "bias correction: the volume holds NaN or infinite intensities inside the "
                "mask; fix or replace those voxels first"
            )
        values = arr[inside]
        if values.min() == values.max():
            return arr.copy()  # no contrast, no field to see (N4's histogram would degenerate)
        return _n4(self, arr, sizes, inside)


def _whole(value: Any) -> int:
    """``value`` as an int, refusing booleans and fractions (``2.5`` shrink is a mistake)."""
    if isinstance(value, bool) or float(value) != int(value):
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


#: What ``prepare`` does by default (MRI): N4 with its default settings.
DEFAULT_BIAS_CORRECTION = BiasCorrection()
#: No correction; also what a cache or checkpoint without the setting means.
NO_BIAS_CORRECTION = BiasCorrection(method="none")


def shrink_factors(shape: Sequence[int], shrink: int) -> tuple[int, int, int]:
    """The per-axis shrink factors N4 fits with: ``shrink``, less along thin axes.

    An axis keeps at least 4 voxels once shrunk (or all of them, if it has fewer), since N4
    cannot fit a spline over a single voxel.

    Args:
        shape: the volume's (X, Y, Z) size.
        shrink: the requested factor.
    """
    x, y, z = (max(1, min(int(shrink), int(n) // 4)) for n in shape)
    return x, y, z


def _n4(
    config: BiasCorrection, arr: np.ndarray, spacing: tuple[float, ...], inside: np.ndarray
) -> np.ndarray:
    import SimpleITK as sitk

    # N4 works on log intensities: keep the fitted voxels strictly positive. The tiny floor
    # touches only voxels at or below zero (background, or noise in a magnitude image).
    scale = abs(float(np.percentile(arr[inside], 99))) or 1.0
    positive = np.maximum(arr, 1e-4 * scale)

    def image(values: np.ndarray, pixel: int) -> Any:
        # SimpleITK indexes (z, y, x): transpose so that its x is our X.
        img = sitk.Cast(
            sitk.GetImageFromArray(np.ascontiguousarray(values.transpose(2, 1, 0))), pixel
        )
        img.SetSpacing(spacing)
        return img

    full = image(positive, sitk.sitkFloat32)
    fit_mask = image(inside.astype(np.uint8), sitk.sitkUInt8)
    factors = list(shrink_factors(arr.shape, config.shrink))
    shrunk = sitk.Shrink(full, factors) if max(factors) > 1 else full
    shrunk_mask = sitk.Shrink(fit_mask, factors) if max(factors) > 1 else fit_mask
    if not sitk.GetArrayViewFromImage(shrunk_mask).any():
        raise InputError(
            f"bias correction: no mask voxel is left once the volume {arr.shape} is shrunk by "
            f"{factors}; lower the shrink factor (--bias-shrink) or widen the mask"
        )

    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([int(n) for n in config.iterations])
    n4.SetNumberOfControlPoints([int(config.control_points)] * 3)
    n4.SetConvergenceThreshold(float(config.convergence))
    if config.threads is not None:
        n4.SetNumberOfThreads(int(config.threads))
    n4.Execute(shrunk, shrunk_mask)
    # The fitted spline evaluated on the full grid, (X, Y, Z) again.
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(full)).transpose(2, 1, 0)
    # N4 leaves the field's overall scale free: fix it to geometric mean 1 inside the mask.
    log_field = log_field - float(np.mean(log_field[inside], dtype=np.float64))
    return (arr / np.exp(log_field)).astype(np.float32)
