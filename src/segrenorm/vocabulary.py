"""The words every stage shares: site keys, translation directions, slice planes.

A cache holds its sites under the keys ``"A"``, ``"B"``, ... (two-site caches: ``"A"`` and
``"B"``); a translator sees exactly two, ``"A"`` its source and ``"B"`` its target, and maps
``"AB"`` (site A to site B, the generator G) and ``"BA"`` (the reverse, F). Volumes are cut
into 2D slices along one of three planes of their RAS+ grid. A cache holds one imaging
modality (:data:`MODALITIES`), and its *pocket classes* (:func:`pocket_classes`: MS lesions,
retinal fluid) are the sparse classes the lesion-wise lens counts one connected pocket at a
time. These names are checked in one place.

Example:
    >>> check_direction("BA")
    'BA'
    >>> source_site("BA"), target_site("BA")
    ('B', 'A')
    >>> pocket_classes(["background", "IRF", "SRF", "PED"])
    [1, 2, 3]
"""

from __future__ import annotations

from collections.abc import Sequence

from segrenorm.errors import ConfigError

__all__ = [
    "ALL_SITE_KEYS",
    "DIRECTIONS",
    "MODALITIES",
    "POCKET_CLASS_NAMES",
    "SITES",
    "SLICE_AXES",
    "check_direction",
    "check_modality",
    "pocket_classes",
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
#: Imaging modalities a cache can hold: brain MRI (T1, FLAIR) and retinal OCT.
MODALITIES: tuple[str, str] = ("mri", "oct")
#: Lower-cased names of the classes that are pockets: MS lesions (``lesion``) and the RETOUCH
#: fluids (intraretinal fluid, subretinal fluid, pigment-epithelial detachment). Matched whole,
#: not as a substring, so a ``lesions_old`` or ``ms_lesion`` class is not one.
POCKET_CLASS_NAMES: tuple[str, ...] = ("lesion", "irf", "srf", "ped")


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


def check_modality(modality: str, *, name: str = "modality") -> str:
    """Return ``modality`` if it is one of :data:`MODALITIES` (``"mri"``, ``"oct"``).

    Args:
        modality: the value to check (exact, lower case).
        name: what the value is called in the message, e.g. ``"--modality"``.

    Returns:
        The value, unchanged.

    Raises:
        ConfigError: for any other value, naming it and the known ones.
    """
    if modality not in MODALITIES:
        raise ConfigError(
            f"{name} {modality!r} is unknown: use one of {', '.join(MODALITIES)} (mri: brain "
            "T1 or FLAIR, oct: retinal OCT)"
        )
    return modality


def pocket_classes(class_names: Sequence[str]) -> list[int]:
    """The foreground classes that are pockets: lesions or retinal fluid, in class order.

    A class is a pocket class when its lower-cased name is one of :data:`POCKET_CLASS_NAMES`
    (``lesion``, ``IRF``, ``SRF``, ``PED`` in any case). Class 0 is the background and never
    one, whatever its name.

    Args:
        class_names: a cache's class names, background first.

    Returns:
        The indices of the pocket classes, ascending; empty for a tissue cache.

    Example:
        >>> pocket_classes(["background", "csf", "gm", "wm"])
        []
    """
    return [
        k for k, name in enumerate(class_names) if k > 0 and str(name).lower() in POCKET_CLASS_NAMES
    ]
