"""Two sites of a many-site cache seen as the ``A`` (source) and ``B`` (target) of a model.

A cache may hold N sites under the keys ``A``, ``B``, ``C``, ... (``manifest["sites"]``); a
translator, its checkpoint and the evaluation speak of two, ``A`` and ``B``
(:data:`segrenorm.vocabulary.SITES`). :func:`choose_pair` turns the names a user gives
(``--set data.source=NAME --set data.target=NAME``) into cache keys, and
:func:`project_manifest` rewrites the manifest onto the pair, which
:meth:`segrenorm.data.slice_cache.SliceCache.open` serves as a pair view.

Example:
    >>> sites = {"A": "Guys", "B": "HH", "C": "IOP"}
    >>> choose_pair("cache/", sites, ("IOP", "Guys"))
    ('C', 'A')
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from segrenorm.errors import ConfigError
from segrenorm.vocabulary import SITES

__all__ = ["PAIR_KEY", "TRAIN_CHOICE", "choose_pair", "project_manifest", "site_key"]

#: Key of a pair view's manifest recording the cache folder (site key) behind ``A`` and ``B``.
PAIR_KEY = "pair"
#: How a user picks two sites of a cache for training, for messages (the default of
#: :func:`choose_pair` and :func:`site_key`; other commands pass their own flags).
TRAIN_CHOICE = "--set data.source=NAME --set data.target=NAME"


def _site_list(sites: Mapping[str, str]) -> str:
    return ", ".join(f"{name} ({key})" for key, name in sites.items())


def site_key(
    where: str | Path,
    sites: Mapping[str, str],
    value: str,
    role: str,
    how_to_choose: str = TRAIN_CHOICE,
) -> str:
    """The cache key of a site given by name (or, failing that, by key).

    Args:
        where: the cache folder, for messages.
        sites: the cache manifest's ``"sites"`` (key -> name).
        value: the site's name or key.
        role: what the site is (``"source"``, ``"target"``, ...), for messages.
        how_to_choose: the caller's flags for choosing sites, for messages.

    Returns:
        The site's cache key.

    Raises:
        ConfigError: ``value`` is neither a site name nor a key of the cache.
    """
    for key, name in sites.items():
        if str(name) == value:
            return key
    if value in sites:
        return value
    raise ConfigError(
        f"{role} site {value!r} is not in the cache {where}: its sites are "
        f"{_site_list(sites)}; choose with {how_to_choose}"
    )


def choose_pair(
    where: str | Path,
    sites: Mapping[str, str],
    pair: tuple[str | None, str | None] | None,
    how_to_choose: str = TRAIN_CHOICE,
) -> tuple[str, str]:
    """The cache keys of the (source, target) sites that ``pair`` names.

    Args:
        where: the cache folder, for messages.
        sites: the cache manifest's ``"sites"`` (key -> name, in cache order).
        pair: ``(source, target)`` site names (or keys); None, or None for both, means the
            cache's two sites in order. One None beside a name means the other site of a
            two-site cache.
        how_to_choose: how the caller's user names the two sites, for messages (default
            :data:`TRAIN_CHOICE`, train's flags; evaluate passes its own).

    Returns:
        ``(source key, target key)``, e.g. ``("C", "A")``.

    Raises:
        ConfigError: an unknown name (listing the choices), the same site twice, or a cache
            of more than two sites without both names.
    """
    source, target = pair if pair is not None else (None, None)
    keys = list(sites)
    if source is None and target is None:
        if len(keys) == 2:
            return keys[0], keys[1]
        raise ConfigError(
            f"the cache {where} holds {len(keys)} sites ({_site_list(sites)}): a model "
            f"translates between two; choose them with {how_to_choose}"
        )
    chosen = [
        None if value is None else site_key(where, sites, str(value), role, how_to_choose)
        for value, role in ((source, "source"), (target, "target"))
    ]
    if None in chosen:
        given = next(k for k in chosen if k is not None)
        if len(keys) != 2:
            missing = "target" if chosen[1] is None else "source"
            raise ConfigError(
                f"the cache {where} holds {len(keys)} sites ({_site_list(sites)}): name the "
                f"{missing} site too ({how_to_choose})"
            )
        other = next(k for k in keys if k != given)
        chosen = [given, other] if chosen[1] is None else [other, given]
    source_key, target_key = str(chosen[0]), str(chosen[1])
    if source_key == target_key:
        raise ConfigError(
            f"source and target are the same site {sites[source_key]!r} ({source_key}) of the "
            f"cache {where}: choose two different sites of {_site_list(sites)}"
        )
    return source_key, target_key


def project_manifest(manifest: dict[str, Any], keys: tuple[str, str]) -> dict[str, Any]:
    """The manifest of the pair ``keys`` seen as sites ``A`` (source) and ``B`` (target).

    Args:
        manifest: a validated cache manifest.
        keys: the cache keys of the source and target sites (:func:`choose_pair`).

    Returns:
        A copy with only the pair's subjects, their ``site`` rewritten to ``A``/``B``,
        ``"sites": {"A": source name, "B": target name}`` and, under :data:`PAIR_KEY`, the
        folders read for ``A`` and ``B`` and every site of the cache.
    """
    view_key = dict(zip(keys, SITES, strict=True))
    projected = copy.deepcopy({k: v for k, v in manifest.items() if k != "subjects"})
    projected["sites"] = {view: str(manifest["sites"][key]) for key, view in view_key.items()}
    projected["subjects"] = [
        {**copy.deepcopy(s), "site": view_key[s["site"]]}
        for s in manifest["subjects"]
        if s["site"] in view_key
    ]
    projected[PAIR_KEY] = {
        "folders": dict(zip(SITES, keys, strict=True)),
        "cache_sites": {str(k): str(v) for k, v in manifest["sites"].items()},
    }
    return projected
