"""Plain values to frozen dataclasses: typed coercion of YAML/JSON values and nested builds.

:func:`build_dataclass` turns a (possibly partial) nested dict into a frozen dataclass over
a base instance, converting each leaf to the field's declared type; it works for any tree
of frozen dataclasses (the run :class:`~segrenorm.config.schema.Config`, the evaluation
settings). :func:`config_from_dict` does that for a run config and validates the result.

Example:
    >>> config_from_dict({"optim": {"iterations": "12"}}).optim.iterations
    12
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any, TypeVar

from segrenorm.config.schema import Config
from segrenorm.errors import ConfigError

__all__ = ["build_dataclass", "coerce_value", "config_from_dict"]

T = TypeVar("T")

#: Text read as true or false (any case).
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
#: Text that means "no value" for an optional field (any case).
_NONE = ("none", "null")


def coerce_value(name: str, annotation: Any, value: Any, *, optional: bool = False) -> Any:
    """Convert a YAML/JSON value to a field's declared type.

    Enums take their value strings (a YAML boolean read from a bare ``off``/``on`` counts as
    that word); booleans also take ``true/false/yes/no/1/0`` text and
    the integers 0 and 1; tuples of numbers take a list or comma-separated text
    (``0,0.1,0.2``); optional fields take None, ``none`` or ``null``.

    Args:
        name: the dotted key, for messages.
        annotation: the field's type (without ``| None``).
        value: the value read from YAML, JSON or an override.
        optional: whether the field also accepts None.

    Raises:
        ConfigError: the value does not fit the type, naming the key and the value.
    """
    if optional and (value is None or (isinstance(value, str) and value.lower() in _NONE)):
        return None
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if isinstance(value, annotation):
            return value
        allowed = ", ".join(m.value for m in annotation)
        if isinstance(value, bool):
            # YAML 1.1 reads a bare off/on (and no/yes) as a boolean: take it back as text.
            spellings = ("on", "yes", "true") if value else ("off", "no", "false")
            value = next((s for s in spellings if s in {m.value for m in annotation}), value)
        for member in annotation:
            if member.value == value:
                return member
        raise ConfigError(f"{name}={value!r} is unknown: choose one of {allowed}.")
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.strip().strip("[]()").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}={value!r} must be a list of numbers.")
        return tuple(coerce_value(f"{name}[]", float, v) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.lower() in (*_TRUE, *_FALSE):
            return value.lower() in _TRUE
        raise ConfigError(f"{name}={value!r} must be true or false.")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int | str | float):
            raise ConfigError(f"{name}={value!r} must be an integer.")
        try:
            as_float = float(value)
        except ValueError:
            raise ConfigError(f"{name}={value!r} must be an integer.") from None
        if not as_float.is_integer():
            raise ConfigError(f"{name}={value!r} must be an integer.")
        return int(as_float)
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be a number.")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r} must be a number.") from None
    if annotation is str:
        return str(value)
    raise ConfigError(f"{name}: cannot read a value of type {annotation}")  # pragma: no cover


def build_dataclass(cls: type[T], data: Any, *, base: T, prefix: str = "") -> T:
    """``base`` with the fields named in ``data`` replaced, converted to their types.

    Nested dataclass fields take nested dicts; the dataclasses' own ``__post_init__``
    checks run on every replaced node.

    Args:
        cls: the dataclass type of ``base``.
        data: field name -> value or nested dict (a partial tree).
        base: the instance whose other fields are kept.
        prefix: the dotted path of ``base`` in the whole tree (``"model."``), for messages.

    Raises:
        ConfigError: a non-mapping, an unknown key or a value that does not fit its field.
    """
    if not isinstance(data, dict):
        if not prefix:
            raise ConfigError(f"config must be a mapping of sections, got {data!r}.")
        section = prefix.rstrip(".")
        raise ConfigError(
            f"{section} names a section: give a mapping of its fields (or set one as "
            f"{section}.FIELD=value), got {data!r}."
        )
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(typing.cast(Any, cls))}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}: "
            f"known keys are {', '.join(prefix + k for k in sorted(known))}."
        )
    updates: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        current = getattr(base, key)
        if dataclasses.is_dataclass(current) and not isinstance(current, type):
            updates[key] = build_dataclass(
                type(current), value, base=current, prefix=f"{prefix}{key}."
            )
        else:
            inner = _unwrap_optional(hint)
            updates[key] = coerce_value(prefix + key, inner, value, optional=inner is not hint)
    return typing.cast(T, dataclasses.replace(typing.cast(Any, base), **updates))


def _unwrap_optional(hint: Any) -> Any:
    """``X`` for ``X | None`` (and ``Optional[X]``); other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def config_from_dict(data: dict[str, Any], *, base: Config | None = None) -> Config:
    """Build and validate a :class:`Config` from a (possibly partial) dict over ``base``.

    Args:
        data: section -> field -> value, e.g. a YAML file's content or ``Config.to_dict()``.
        base: the config whose other fields are kept (the defaults when None).

    Raises:
        ConfigError: an unknown key or an invalid value, naming the key.
    """
    return build_dataclass(Config, _upgrade(data), base=base or Config()).validate()


def _upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """Read configs written before the conditioning fix (segrenorm 0.1.0 runs and checkpoints).

    They carry ``model.zero_init_film`` and were built with the N(0, 0.02) extractor and no
    embedding normalisation: rebuilding those weights needs that same architecture, so the old
    key maps to ``extractor_init=normal, embed_norm=false`` and, for the initial FiLM heads, to
    ``film_init_std`` 0 (zero heads) or the old N(0, 0.02) head weights' std.
    """
    model = data.get("model")
    if not isinstance(model, dict) or "zero_init_film" not in model:
        return data
    model = dict(model)
    zero = model.pop("zero_init_film")
    embed_dim = model.get("embed_dim", Config().model.embed_dim)
    old_std = min(1.0, 0.02 * float(embed_dim) ** 0.5)  # head weights N(0, 0.02): std_w*sqrt(d)
    model.setdefault("film_init_std", 0.0 if zero else old_std)
    model.setdefault("extractor_init", "normal")
    model.setdefault("embed_norm", False)
    return {**data, "model": model}
