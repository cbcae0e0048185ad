"""Editable device files: the packaged ones found by name, a user's read from its path.

MRI scanner profiles (:mod:`segrenorm.simulate.scanners`, folder ``profiles/``) and OCT vendor
files (:mod:`segrenorm.simulate.oct_vendors`, folder ``oct_profiles/``) are both YAML or JSON
mappings; this module finds and parses them, and each module builds its own dataclass from the
mapping. A file without a ``name`` field is named after its stem.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from segrenorm.errors import ConfigError

__all__ = [
    "PROFILE_SUFFIXES",
    "check_fields",
    "check_range",
    "packaged_files",
    "read_device_file",
]

#: The endings a device file may have.
PROFILE_SUFFIXES: tuple[str, ...] = (".yaml", ".yml", ".json")


def packaged_files(folder: str) -> dict[str, Traversable]:
    """The device files shipped in ``segrenorm/simulate/<folder>/``, keyed by file stem.

    Args:
        folder: the package folder (``"profiles"`` or ``"oct_profiles"``).
    """
    root = resources.files("segrenorm.simulate").joinpath(folder)
    if not root.is_dir():
        return {}
    return {
        entry.name.rsplit(".", 1)[0]: entry
        for entry in root.iterdir()
        if entry.is_file() and entry.name.lower().endswith(PROFILE_SUFFIXES)
    }


def _parse(text: str, suffix: str, source: str, stem: str, kind: str) -> Any:
    try:
        data = json.loads(text) if suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{source}: cannot read {kind} ({exc}); fix the file") from None
    if isinstance(data, Mapping) and "name" not in data:
        data = {**data, "name": stem}
    return data


def read_device_file(
    spec: str | Path,
    packaged: Mapping[str, Traversable],
    *,
    kind: str,
    unknown: Callable[[str], str],
) -> tuple[Any, str]:
    """The parsed mapping of a packaged device file (by name) or of a file (by path).

    Args:
        spec: a key of ``packaged`` or the path of a ``.yaml``/``.yml``/``.json`` file.
        packaged: :func:`packaged_files` of the device kind's folder.
        kind: what the file holds, for messages (``"scanner profile"``, ``"OCT vendor"``).
        unknown: the message for a ``spec`` that is neither (given ``str(spec)``).

    Returns:
        ``(data, source)``: the parsed content (``name`` filled in from the stem) and where it
        came from, for the dataclass's own validation messages.

    Raises:
        ConfigError: an unknown name or missing file, unreadable text, or invalid YAML/JSON.
    """
    if isinstance(spec, str) and spec in packaged:
        entry = packaged[spec]
        source = f"packaged {kind} {entry.name}"
        text = entry.read_text(encoding="utf-8")
        return _parse(text, Path(entry.name).suffix, source, spec, kind), source
    path = Path(spec)
    if path.suffix.lower() not in PROFILE_SUFFIXES or not path.is_file():
        raise ConfigError(unknown(str(spec)))
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {kind} ({exc}); fix the file") from None
    return _parse(text, path.suffix, str(path), path.stem, kind), str(path)


def check_fields(
    source: str, data: object, known: Sequence[str], required: Sequence[str]
) -> Mapping[str, Any]:
    """``data`` as a mapping with only ``known`` fields and every ``required`` one.

    Args:
        source: where the mapping came from, for messages (e.g. a file path).
        data: the parsed file.
        known: the dataclass's field names.
        required: the fields without defaults.

    Raises:
        ConfigError: not a mapping, an unknown field or a missing one (all named).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of fields, got {type(data).__name__}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{source}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"known fields are {', '.join(known)}"
        )
    missing = [key for key in required if key not in data]
    if missing:
        raise ConfigError(f"{source}: missing required field(s) {', '.join(missing)}")
    return data


def check_range(where: str, key: str, value: Any, low: float, high: float) -> None:
    """Raise :class:`ConfigError` naming field ``key`` unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise ConfigError(f"{where}: field {key!r} = {value!r} is outside [{low:g}, {high:g}]")


def check_number(where: str, key: str, value: object, kind: type) -> None:
    """Raise :class:`ConfigError` naming field ``key`` unless ``value`` is an ``int`` (for
    ``kind`` int) or a finite int or float (otherwise); booleans are refused."""
    ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
    if isinstance(value, bool) or not ok or not math.isfinite(value):  # type: ignore[arg-type]
        wanted = "an integer" if kind is int else "a finite number"
        raise ConfigError(f"{where}: field {key!r} must be {wanted}, got {value!r}")
