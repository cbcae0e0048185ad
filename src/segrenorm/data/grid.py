"""The one physical grid of a slice cache: which voxel size every volume is resampled to.

A translator learns the anatomy at one physical scale, so ``prepare`` puts every volume of
every site on one spacing (canonical RAS axes, mm) before it is cut into slices:

* by default the per-axis median voxel size of the *target* site's images, read from their
  headers before any subject is processed (``--target NAME``; with two sites the second one,
  site ``B``; with more, the target must be named);
* or the spacing the user gives (``--spacing X Y Z``).

A volume whose voxel size is within :data:`GRID_TOLERANCE` (relative, per axis) of the grid is
left as it is, so data already on one grid is cut exactly as it was before the grid existed.
The choice is recorded in the manifest (``"spacing"`` and ``"grid"``; ``docs/cache-format.md``).

Example:
    >>> on_grid((1.0, 1.0, 1.0005), (1.0, 1.0, 1.0))
    True
    >>> GridChoice((1.0, 1.0, 1.2), "target-median", "3T").to_dict()["spacing"]
    [1.0, 1.0, 1.2]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from nibabel.orientations import io_orientation

from segrenorm.data.listing import SubjectRecord
from segrenorm.data.pairs import site_key
from segrenorm.errors import ConfigError
from segrenorm.vocabulary import site_keys
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.readwrite import read_geometry

__all__ = [
    "GRID_SOURCES",
    "GRID_TOLERANCE",
    "GridChoice",
    "canonical_spacing",
    "choose_grid",
    "on_grid",
]

#: Relative per-axis voxel-size difference below which a volume counts as on the grid.
GRID_TOLERANCE = 1e-3
#: Where a cache's grid came from: the target site's median voxel size, or the user.
GRID_SOURCES = ("target-median", "user")


def on_grid(
    spacing: Sequence[float], grid: Sequence[float], *, tolerance: float = GRID_TOLERANCE
) -> bool:
    """Whether a voxel size equals the grid's on every axis, to a relative ``tolerance``.

    Args:
        spacing: the volume's voxel size (mm, the grid's axes).
        grid: the grid's voxel size (mm).
        tolerance: relative difference tolerated per axis.
    """
    return all(
        abs(float(s) / float(g) - 1.0) <= tolerance for s, g in zip(spacing, grid, strict=True)
    )


def canonical_spacing(geometry: Geometry) -> tuple[float, float, float]:
    """A volume's voxel size along the RAS axes it gets in canonical orientation.

    The same permutation :func:`~segrenorm.volumes.spatial.to_canonical` applies, computed
    from the affine alone (no voxel data needed).

    Args:
        geometry: the volume's geometry as stored.
    """
    spacing = [0.0, 0.0, 0.0]
    for old_axis, (new_axis, _flip) in enumerate(io_orientation(geometry.affine)):
        spacing[int(new_axis)] = float(geometry.spacing[old_axis])
    return spacing[0], spacing[1], spacing[2]


@dataclass(frozen=True)
class GridChoice:
    """The grid of a cache and where it came from.

    Args:
        spacing: voxel size in mm along the canonical R, A and S axes.
        source: ``"target-median"`` or ``"user"`` (see :data:`GRID_SOURCES`).
        target: the target site whose images gave the median; for a user grid the target
            named with it, or None.

    Raises:
        ConfigError: a spacing that is not three positive finite numbers, or an unknown source.
    """

    spacing: tuple[float, float, float]
    source: str
    target: str | None = None

    def __post_init__(self) -> None:
        values = tuple(float(s) for s in self.spacing)
        if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
            raise ConfigError(f"spacing {self.spacing!r} must be three positive numbers (mm)")
        if self.source not in GRID_SOURCES:
            raise ConfigError(f"grid source {self.source!r} is not one of {GRID_SOURCES}")
        object.__setattr__(self, "spacing", values)

    def to_dict(self) -> dict[str, Any]:
        """The manifest's ``"grid"`` entry: ``spacing``, ``from`` and ``target``."""
        return {"spacing": list(self.spacing), "from": self.source, "target": self.target}


def _check_target(site_names: Sequence[str], target: str) -> str:
    """The target site's name, given by name or by cache key (``B``), the one lookup
    :func:`~segrenorm.data.pairs.site_key` that ``data.target`` and ``train --to`` use too."""
    sites = dict(zip(site_keys(len(site_names)), site_names, strict=True))
    return sites[site_key("being prepared", sites, target, "target", "--target NAME (target=)")]


def _default_target(site_names: Sequence[str]) -> str:
    """The second of two sites; with more sites the target must be named."""
    if len(site_names) == 2:
        return site_names[1]
    listed = ", ".join(repr(name) for name in site_names)
    raise ConfigError(
        f"the listing has {len(site_names)} sites ({listed}): name the target site whose median "
        "voxel size becomes the cache's grid with --target NAME (target=), or give the grid "
        "with --spacing X Y Z (spacing=)"
    )


def choose_grid(
    records: Sequence[SubjectRecord],
    site_names: Sequence[str],
    *,
    spacing: Sequence[float] | None = None,
    target: str | None = None,
    spacing_of: Callable[[Geometry], tuple[float, float, float]] = canonical_spacing,
) -> GridChoice:
    """The one spacing every volume of a cache is resampled to.

    Without ``spacing``, the per-axis median canonical voxel size of the target site's images,
    read from their headers (before any subject is processed).

    Args:
        records: every subject of the cache.
        site_names: the sites in cache order.
        spacing: the user's grid (mm, RAS axes), or None for the target site's median.
        target: the target site's name or cache key (``A``, ``B``, ...); default the second
            site when there are two.
        spacing_of: a header's voxel size along the axes the cache's volumes get (default
            :func:`canonical_spacing`, RAS; OCT keeps the stored voxel order:
            :meth:`~segrenorm.data.slicing.SliceRecipe.grid_spacing`).

    Returns:
        The grid, its source and its target site (by name).

    Raises:
        ConfigError: ``target`` is not a site, or there are more than two sites and neither
            ``target`` nor ``spacing`` was given; a bad ``spacing``.
        InputError: a target image's header cannot be read or is invalid (the file named).
    """
    named = None if target is None else _check_target(site_names, target)
    if spacing is not None:
        if len(spacing) != 3:
            raise ConfigError(f"spacing {tuple(spacing)!r} must be three positive numbers (mm)")
        return GridChoice((spacing[0], spacing[1], spacing[2]), "user", named)
    site = _default_target(site_names) if named is None else named
    sizes = [spacing_of(read_geometry(r.image)) for r in records if r.site == site]
    median = np.median(np.asarray(sizes, dtype=np.float64), axis=0)
    return GridChoice((float(median[0]), float(median[1]), float(median[2])), "target-median", site)
