"""From a cache, trained runs and harmonized folders to a written report.

:func:`evaluate_cache` is what ``segrenorm evaluate`` runs: it reads the cache's held-out
slices, applies the classical baselines, takes each named method from a trained run
(translated in memory from the cache's slices) and/or from a folder of volumes written by
``segrenorm harmonize`` (read back and cut like the cache), runs the four lenses and writes
the report. A method given both ways takes its images from the folder and its robustness
curve from the run.

Example:
    >>> runs = {"segrenorm": "runs/00000-cpu-segrenorm"}
    >>> paths, results = evaluate_cache("cache/", "report/", models=runs)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from segrenorm.errors import ConfigError
from segrenorm.evaluate.data import EvalData, slices_from_volumes
from segrenorm.evaluate.methods import BASELINES, baseline_slices, translator_slices
from segrenorm.evaluate.suite import EvaluationConfig, MethodInput, run_evaluation
from segrenorm.report.write import ReportPaths, write_report

__all__ = ["evaluate_cache", "evaluation_config"]

log = logging.getLogger(__name__)


def _coerce(where: str, default: Any, text: str, *, optional: bool) -> Any:
    """Parse ``text`` as the type of ``default`` (``none`` for optional fields)."""
    if optional and text.lower() in ("none", "null"):
        return None
    try:
        if isinstance(default, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if isinstance(default, tuple) or default is None:  # a list of numbers
            inner = text.strip().strip("[]()")
            return tuple(float(v) for v in inner.split(",") if v.strip())
        return type(default)(text)
    except ValueError:
        raise ConfigError(
            f"evaluation setting {where}={text!r} is not a valid {_kind(default)}"
        ) from None


def _kind(default: Any) -> str:
    if default is None or isinstance(default, tuple):
        return "comma-separated list of numbers"
    return type(default).__name__


def evaluation_config(
    overrides: Sequence[str] = (), base: EvaluationConfig | None = None
) -> EvaluationConfig:
    """An :class:`EvaluationConfig` with ``field=value`` overrides applied.

    Nested fields use dots: ``autoencoder.iterations=200``, ``segmentor.ngf=16``,
    ``sigmas=0,0.1,0.2``.

    Args:
        overrides: ``"field=value"`` strings.
        base: the configuration to start from (the defaults when None).

    Raises:
        ConfigError: an unknown field, a malformed override or an invalid value.
    """
    config = base or EvaluationConfig()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"evaluation setting {item!r} must look like field=value")
        parts = key.strip().split(".")
        config = _replace(config, parts, text.strip(), key)
    return config


def _replace(node: Any, parts: list[str], text: str, key: str) -> Any:
    names = {f.name for f in dataclasses.fields(node)}
    if parts[0] not in names:
        raise ConfigError(
            f"evaluation setting {key!r} is unknown: {type(node).__name__} has "
            f"{', '.join(sorted(names))}"
        )
    current = getattr(node, parts[0])
    if len(parts) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"evaluation setting {key!r}: {parts[0]} has no sub-fields")
        value = _replace(current, parts[1:], text, key)
    elif dataclasses.is_dataclass(current):
        raise ConfigError(f"evaluation setting {key!r} names a section: add .FIELD")
    else:
        kind = {f.name: f.type for f in dataclasses.fields(node)}[parts[0]]
        value = _coerce(key, current, text, optional="None" in str(kind))
    return dataclasses.replace(node, **{parts[0]: value})


def _direction(models: Mapping[str, Any]) -> str:
    directions = {name: cfg.data.direction for name, (_, cfg) in models.items()}
    found = set(directions.values())
    if len(found) > 1:
        raise ConfigError(
            f"the runs were trained in different directions ({directions}): evaluate "
            "runs of one direction together"
        )
    return found.pop() if found else "AB"


def evaluate_cache(
    cache: str | Path,
    out: str | Path,
    *,
    models: Mapping[str, str | Path] | None = None,
    harmonized: Mapping[str, str | Path] | None = None,
    baselines: Sequence[str] = BASELINES,
    config: EvaluationConfig | None = None,
    device: str = "cpu",
    title: str = "segrenorm evaluation",
    on_stage: Callable[[str], None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[ReportPaths, dict[str, Any]]:
    """Evaluate baselines, trained runs and harmonized folders on a cache's held-out data.

    Args:
        cache: the slice cache the runs were trained on.
        out: the report folder.
        models: method name -> run directory or checkpoint.
        harmonized: method name -> folder of harmonized held-out source volumes.
        baselines: classical baselines to include (``none`` is always included).
        config: budgets and seeds of the lenses.
        device: where the translators run.
        title: the report's title.
        on_stage: progress callback.
        extra: more JSON-ready fields for ``results.json`` (e.g. training times).

    Returns:
        ``(paths, results)``: the report's files and its numbers.

    Raises:
        ConfigError: a method name used twice as a baseline, or runs of mixed direction.
    """
    import torch

    from segrenorm.models.checkpoint import load_translator

    models, harmonized = dict(models or {}), dict(harmonized or {})
    clash = sorted((set(models) | set(harmonized)) & set(BASELINES))
    if clash:
        raise ConfigError(
            f"method name(s) {', '.join(clash)} are baseline names: name runs and folders "
            "differently (e.g. after their translator)"
        )
    loaded = {name: load_translator(path, device) for name, path in models.items()}
    data = EvalData.from_cache(cache, direction=_direction(loaded))
    config = config or EvaluationConfig()
    say = on_stage or (lambda text: log.info("%s", text))
    say("classical baselines")
    chosen = list(dict.fromkeys(["none", *baselines]))
    methods = {k: MethodInput(v) for k, v in baseline_slices(data, chosen).items()}
    for name in dict.fromkeys([*models, *harmonized]):
        translator = loaded[name][0] if name in loaded else None
        if name in harmonized:
            say(f"reading harmonized volumes of {name} from {harmonized[name]}")
            slices = slices_from_volumes(data, harmonized[name])
        else:
            assert translator is not None
            say(f"translating held-out slices with {name}")
            model = translator

            def translate(x: torch.Tensor, model: Any = model) -> torch.Tensor:
                return typing.cast(torch.Tensor, model.translate(x, "AB"))

            slices = translator_slices(
                translate, data.source.images, data.source.masks,
                batch_size=config.batch_size, device=device,
            )  # fmt: skip
        methods[name] = MethodInput(slices, translator=translator, kind="translator")
    results, artifacts = run_evaluation(data, methods, config, on_stage=say)
    extra = {
        "runs": {name: str(path) for name, path in models.items()},
        "harmonized_folders": {name: str(path) for name, path in harmonized.items()},
        "evaluation_config": _plain(config),
        **(extra or {}),
    }
    paths = write_report(out, results, artifacts, data, title=title, extra=extra)
    return paths, {**results, **extra}


def _plain(config: EvaluationConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
