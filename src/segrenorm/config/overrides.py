"""The one ``section.field=value`` override parser, for any tree of frozen dataclasses.

``segrenorm train --set``, ``--eval-set`` and ``evaluate --set`` all read their values
here: the text after ``=`` is read as YAML (so ``12``, ``1e-3``, ``true``, ``null`` and
``[0.5, 1]`` are typed), then converted to the field's declared type by
:func:`~segrenorm.config.build.coerce_value`.

Example:
    >>> from segrenorm.config.schema import Config
    >>> apply_overrides(Config(), ["optim.iterations=12", "run.amp=bf16"]).run.amp.value
    'bf16'
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import yaml

from segrenorm.config.build import build_dataclass
from segrenorm.errors import ConfigError

__all__ = ["apply_overrides", "override_tree", "parse_override"]

T = TypeVar("T")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``"section.field=value"`` into its key path and its YAML-typed value.

    Args:
        text: one override, e.g. ``"optim.iterations=500"`` or ``"sigmas=0,0.1"``.

    Returns:
        ``(["optim", "iterations"], 500)``; text that is not valid YAML stays a string.

    Raises:
        ConfigError: no ``=`` or an empty key.
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like section.field=value.")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def override_tree(
    overrides: Iterable[str], tree: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A nested dict holding ``overrides``, merged over a copy of ``tree``.

    Args:
        overrides: ``section.field=value`` strings; a later one wins.
        tree: a nested dict to start from (e.g. a YAML file's content); not modified.

    Raises:
        ConfigError: a malformed override, or one that treats a value as a section.
    """
    out: dict[str, Any] = copy.deepcopy(dict(tree or {}))
    for item in overrides:
        keys, value = parse_override(item)
        node = out
        for name in keys[:-1]:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {name} is not a section.")
        node[keys[-1]] = value
    return out


def apply_overrides(base: T, overrides: Iterable[str]) -> T:
    """``base`` (a frozen dataclass, possibly nested) with ``overrides`` applied.

    Only the dataclasses' own ``__post_init__`` checks run; call ``Config.validate()``
    on a run config afterwards.

    Args:
        base: the settings to start from, e.g. a checkpoint's config or
            ``EvaluationConfig()``.
        overrides: ``section.field=value`` strings (``autoencoder.iterations=200``).

    Raises:
        ConfigError: a malformed override, an unknown key or a value that does not fit.
    """
    return build_dataclass(type(base), override_tree(overrides), base=base)
