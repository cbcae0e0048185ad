"""Loading a run config: a preset name or a YAML/JSON file, then ``--set`` overrides.

A YAML file may name the preset it starts from under ``preset:`` and override any field;
the command line may then override single fields with ``section.field=value``. Unknown
keys and out-of-range values raise :class:`~segrenorm.errors.ConfigError` naming the key.

Example:
    >>> cfg = load_config("cpu", overrides=["optim.iterations=10"])
    >>> cfg.optim.iterations
    10
    >>> cfg.model.translator.value
    'segrenorm'
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from segrenorm.config.build import config_from_dict
from segrenorm.config.overrides import override_tree
from segrenorm.config.presets import PRESETS
from segrenorm.config.schema import Config
from segrenorm.errors import ConfigError

__all__ = ["load_config"]


def load_config(source: str | Path, *, overrides: Sequence[str] | None = None) -> Config:
    """Resolve a preset name or a YAML/JSON file, then apply ``section.field=value`` overrides.

    Args:
        source: a key of :data:`~segrenorm.config.presets.PRESETS`, or a path to a YAML/JSON
            file whose optional ``preset:`` key names the preset it starts from.
        overrides: strings such as ``"optim.iterations=500"``.

    Raises:
        ConfigError: unknown preset, unreadable file, unknown key or invalid value.
    """
    text = str(source)
    data: dict[str, Any] = {}
    if text in PRESETS:
        base = PRESETS[text]
    else:
        base, data = _read_file(text)
    return config_from_dict(override_tree(overrides or [], data), base=base)


def _read_file(text: str) -> tuple[Config, dict[str, Any]]:
    """The preset a config file starts from and the sections it sets (``name`` included)."""
    path = Path(text)
    if not path.suffix and not path.exists():
        raise ConfigError(
            f"unknown preset {text!r}: choose one of {', '.join(PRESETS)} "
            "or give a path to a YAML file."
        )
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found.")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}).") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections.")
    data = dict(loaded)
    preset = data.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"{path}: unknown preset {preset!r}: use {', '.join(PRESETS)}.")
    base = PRESETS[preset] if preset else Config()
    data.setdefault("name", path.stem)
    return base, data
