"""The evaluate workflow: from a cache, trained runs and harmonized folders to a report.

:func:`evaluate_cache` is what ``segrenorm evaluate`` runs: it reads the cache's held-out
slices, applies the classical baselines, takes each named method from a trained run
(translated in memory from the cache's slices) and/or from a folder of volumes written by
``segrenorm harmonize`` (read back and cut like the cache), runs the four lenses and writes
the report. A method given both ways takes its images from the folder and its robustness
curve from the run. Every conditioned (segrenorm) run also gets its wrong-segmentation
control row ``NAME (wrong seg)`` (:mod:`segrenorm.evaluate.controls`), translated from the
run in memory.

Example:
    >>> runs = {"segrenorm": "runs/00000-cpu-segrenorm"}
    >>> paths, results = evaluate_cache("cache/", "report/", models=runs)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segrenorm.errors import ConfigError
from segrenorm.evaluate.conditioning import partner_rows
from segrenorm.evaluate.controls import CONTROL_KIND, control_name, wrong_segmentation_slices
from segrenorm.evaluate.data import EvalData, slices_from_volumes
from segrenorm.evaluate.methods import (
    BASELINES,
    baseline_slices,
    n4_corrected_baselines,
    output_region,
    translator_slices,
)
from segrenorm.evaluate.suite import EvaluationConfig, MethodInput, run_evaluation
from segrenorm.models.conditioning import is_conditioned, translate_with_partner
from segrenorm.models.tiling import inference_tile, parse_tiles, tiled_translation
from segrenorm.models.translator import Translator
from segrenorm.report.write import ReportPaths, write_report

__all__ = ["EVAL_SPLITS", "evaluate_cache"]

log = logging.getLogger(__name__)

#: The held-out splits ``evaluate`` scores: val to tune and select, test for the final table.
EVAL_SPLITS: tuple[str, ...] = ("val", "test")


def _direction(models: Mapping[str, Any]) -> str:
    """The direction every loaded run was trained in (``AB`` when there are none)."""
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
    split: str = "test",
    tiles: str | int = "none",
    source: str | None = None,
    target: str | None = None,
    fold: int | None = None,
    segmentors: str | Path | None = None,
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
        split: the held-out subjects scored: ``"val"`` while tuning presets and choosing
            checkpoints, ``"test"`` (the default) once, for the final table. Recorded in
            ``results.json`` as ``split``.
        tiles: how the runs translate, by the rule ``segrenorm harmonize --tiles`` uses
            (:func:`~segrenorm.models.tiling.inference_tile`): ``"none"`` (whole slices, the
            default), ``"auto"`` (tiles of the training crop size for a run trained on
            crops) or a tile side. The tile of each run is recorded in ``results.json`` as
            ``tiles``. Robustness curves and the conditioning figure use whole slices.
        source: the source site of a cache of more than two sites, for harmonized folders
            without a run (runs bring their own pair: see
            :func:`~segrenorm.workflows.pairs.evaluation_pair`).
        target: the target site, likewise.
        fold: leave-one-subject-out / k-fold: score the subjects of this fold of the cache
            (at both sites) with runs trained with ``data.fold`` equal to it (segmentors
            and references train on every other subject); None (the default) scores
            ``split``. Recorded in ``results.json`` as ``fold`` (absent without one).
        segmentors: a folder of trained post-hoc segmentors: each one this evaluation needs
            is loaded from it when an earlier evaluation trained it on the same slices with
            the same settings, and trained and stored there otherwise
            (:mod:`segrenorm.evaluate.segmentor_store`); None (the default) trains them all.

    Returns:
        ``(paths, results)``: the report's files and its numbers.

    Raises:
        ConfigError: a method name used twice as a baseline, runs of mixed direction or
            site pair, a split other than val or test, or a ``tiles`` value that is
            unknown, below 1 or not a multiple of a run's stride; a fold with the val
            split, or a run trained on another fold than the one scored (or on a fold when
            the cache's split is scored): it saw the subjects it would be scored on.
    """
    import torch

    from segrenorm.data.slice_cache import SliceCache
    from segrenorm.models.checkpoint import load_translator
    from segrenorm.workflows.pairs import EVALUATE_CHOICE, evaluation_pair

    if split not in EVAL_SPLITS:
        raise ConfigError(
            f"evaluation split {split!r} is unknown: use val (tuning, checkpoint selection) or "
            "test (the final table)"
        )
    tiles = parse_tiles(tiles)
    models, harmonized = dict(models or {}), dict(harmonized or {})
    clash = sorted((set(models) | set(harmonized)) & set(BASELINES))
    if clash:
        raise ConfigError(
            f"method name(s) {', '.join(clash)} are baseline names: name runs and folders "
            "differently (e.g. after their translator)"
        )
    if fold is not None and split != "test":
        raise ConfigError(
            f"--fold {fold} scores the fold's held-out subjects; folds have no val split: "
            "drop --split val (choose settings on the cache's val split, without --fold)"
        )
    loaded = {name: load_translator(path, device) for name, path in models.items()}
    _check_folds(loaded, models, fold)
    pair = evaluation_pair(cache, models, source, target)
    opened = SliceCache.open(cache, pair=pair, how_to_choose=EVALUATE_CHOICE)
    data = EvalData.from_cache(opened, direction=_direction(loaded), split=split, fold=fold)
    config = config or EvaluationConfig()
    say = on_stage or (lambda text: log.info("%s", text))
    say("classical baselines")
    chosen = list(dict.fromkeys(["none", *baselines]))
    methods = {k: MethodInput(v) for k, v in baseline_slices(data, chosen).items()}
    # The tile of each run, as harmonize picks it (a slice within one tile goes whole).
    shape = data.cache.slice_shape
    tile_of = {name: inference_tile(cfg, shape, tiles) for name, (_, cfg) in loaded.items()}
    for name in dict.fromkeys([*models, *harmonized]):
        translator = loaded[name][0] if name in loaded else None
        # What the run reads (N, k, H, W): for its own row and for its control, built once.
        stacks = None if translator is None else data.source_stacks(translator.context_slices)
        if name in harmonized:
            say(f"reading harmonized volumes of {name} from {harmonized[name]}")
            slices = slices_from_volumes(data, harmonized[name])
        else:
            assert translator is not None and stacks is not None
            say(f"translating held-out slices with {name}")
            model = translator

            def translate(x: torch.Tensor, model: Any = model) -> torch.Tensor:
                return typing.cast(torch.Tensor, model.translate(x, "AB"))

            tiled = tiled_translation(
                translate, tile_of[name], sw_batch_size=config.batch_size, stride=model.stride
            )
            slices = translator_slices(
                tiled, stacks, data.source.masks, batch_size=config.batch_size, device=device,
                keep=output_region(data),  # OCT: the background too, whose stripes are scored
            )  # fmt: skip
        methods[name] = MethodInput(slices, translator=translator, kind="translator")
        if translator is not None and stacks is not None and is_conditioned(translator):
            say(f"translating held-out slices with {name}, each given another's segmentation")
            methods[control_name(name)] = MethodInput(
                _wrong_segmentation(translator, data, stacks, config, device, tile_of[name]),
                kind=CONTROL_KIND,
            )
    results, artifacts = run_evaluation(data, methods, config, on_stage=say, segmentors=segmentors)
    # Which classical rows saw N4-corrected source volumes (the report says so).
    results["n4_corrected_baselines"] = n4_corrected_baselines(data, chosen)
    extra = {
        "split": split,
        **({} if fold is None else {"fold": fold}),  # absent without one, as before folds
        "runs": {name: str(path) for name, path in models.items()},
        "harmonized_folders": {name: str(path) for name, path in harmonized.items()},
        "evaluation_config": _plain(config),
        "tiles": {"choice": tiles, "runs": tile_of},
        **(extra or {}),
    }
    paths = write_report(out, results, artifacts, data, title=title, extra=extra)
    return paths, {**results, **extra}


def _check_folds(
    loaded: Mapping[str, Any], models: Mapping[str, str | Path], fold: int | None
) -> None:
    """Refuse a run whose training saw the subjects scored: another fold, or a fold at all
    when the cache's fixed split is scored (a fold trains on the test subjects too)."""
    for name, (_, cfg) in loaded.items():
        trained = cfg.data.fold
        if trained == fold:
            continue
        if fold is None:
            raise ConfigError(
                f"run {name} ({models[name]}) was trained with data.fold={trained}, on every "
                "subject outside that fold, the cache's test subjects included: score it on "
                f"its fold with --fold {trained}"
            )
        what = "on the cache's train split" if trained is None else f"with data.fold={trained}"
        raise ConfigError(
            f"run {name} ({models[name]}) was trained {what}, so it saw the subjects of fold "
            f"{fold}: score it with {'no --fold' if trained is None else f'--fold {trained}'}, "
            f"or train one for this fold with --set data.fold={fold}"
        )


def _wrong_segmentation(
    translator: Translator,
    data: EvalData,
    stacks: np.ndarray,
    config: EvaluationConfig,
    device: str,
    tile: int | None = None,
) -> np.ndarray:
    """The wrong-segmentation control's slices: G(x | f(x')), partners as the sensitivity's,
    in the tiles of the method's own row (a tile's partner is the partner's same tile), from
    ``stacks``, the (N, k, H, W) source stacks the method's own row reads."""
    pair = functools.partial(translate_with_partner, translator, direction="AB")
    translate_pair = tiled_translation(
        pair, tile, sw_batch_size=config.batch_size, stride=translator.stride
    )
    partner = partner_rows(len(data.source), config.seed)
    return wrong_segmentation_slices(
        translate_pair, stacks, data.source.masks, partner,
        batch_size=config.batch_size, device=device, keep=output_region(data),
    )  # fmt: skip


def _plain(config: EvaluationConfig) -> dict[str, Any]:
    """The settings as a JSON-ready dict for ``results.json``."""
    return dataclasses.asdict(config)
