"""The words every stage shares: site keys, translation directions, slice planes.

A cache holds its sites under the keys ``"A"``, ``"B"``, ... (two-site caches: ``"A"`` and
``"B"``); a translator sees exactly two, ``"A"`` its source and ``"B"`` its target, and maps
``"AB"`` (site A to site B, the generator G) and ``"BA"`` (the reverse, F). Volumes are cut
into 2D slices along one of three planes of their RAS+ grid. These names are checked in one
place.

Example:
    >>> check_direction("BA")
    'BA'
    >>> source_site("BA"), target_site("BA")
    ('B', 'A')
"""

from __future__ import annotations

from segrenorm.errors import ConfigError

__all__ = [
    "ALL_SITE_KEYS",
    "DIRECTIONS",
    "SITES",
    "SLICE_AXES",
    "check_direction",
    "site_keys",
    "source_site",
    "target_site",
]

#: Keys of the two sites a translator (and a cache's pair view) sees: source, target.
SITES: tuple[str, str] = ("A", "B")
#: Every cache site key, in order: a cache of N sites uses the first N (two-site caches: A, B).
ALL_SITE_KEYS: str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
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


def site_keys(n_sites: int) -> tuple[str, ...]:
    """The cache keys of ``n_sites`` sites: ``"A"``, ``"B"``, ``"C"``, ...

    Args:
        n_sites: number of sites, 2 to 26.

    Raises:
        ConfigError: for fewer than two or more than 26 sites.
    """
    if not 2 <= n_sites <= len(ALL_SITE_KEYS):
        raise ConfigError(
            f"a cache holds 2 to {len(ALL_SITE_KEYS)} sites, not {n_sites}; harmonization "
            "needs a source and a target site"
        )
    return tuple(ALL_SITE_KEYS[:n_sites])
