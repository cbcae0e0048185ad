"""The words every stage shares: site keys, translation directions, slice planes.

A cache holds two sites under the keys ``"A"`` and ``"B"``; a translator maps ``"AB"`` (site A
to site B, the generator G) and ``"BA"`` (the reverse, F). Volumes are cut into 2D slices
along one of three planes of their RAS+ grid. These names are checked in one place.

Example:
    >>> check_direction("BA")
    'BA'
    >>> source_site("BA"), target_site("BA")
    ('B', 'A')
"""

from __future__ import annotations

from segrenorm.errors import ConfigError

__all__ = [
    "DIRECTIONS",
    "SITES",
    "SLICE_AXES",
    "check_direction",
    "source_site",
    "target_site",
]

#: Keys of the two sites of a cache or checkpoint.
SITES: tuple[str, str] = ("A", "B")
#: Translation directions: ``"AB"`` is site A to site B (G), ``"BA"`` the reverse (F).
DIRECTIONS: tuple[str, str] = ("AB", "BA")
#: Slice planes of a RAS+ volume and the voxel axis each one cuts across.
SLICE_AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}


def check_direction(direction: str, *, name: str = "direction") -> str:
    """Return ``direction`` if it is ``"AB"`` or ``"BA"``.

    Args:
        direction: the value to check.
        name: what the value is called in the message, e.g. ``"data.direction"``.

    Raises:
        ConfigError: for any other value, naming it.
    """
    if direction not in DIRECTIONS:
        raise ConfigError(
            f"{name} {direction!r} is unknown: use 'AB' (site A to site B) or 'BA' (B to A)."
        )
    return direction


def source_site(direction: str) -> str:
    """The site a direction translates from (``"AB"`` -> ``"A"``)."""
    return check_direction(direction)[0]


def target_site(direction: str) -> str:
    """The site a direction translates to (``"AB"`` -> ``"B"``)."""
    return check_direction(direction)[1]
