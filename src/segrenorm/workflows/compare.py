"""Train the four translators on one cache with one budget, then evaluate them together.

``segrenorm compare`` is the paper's comparison on your data: CycleGAN, S-CycleGAN,
SemGAN and SegRenorm share the config (a preset or YAML, with overrides), the cache, the
seed and the iteration budget; only ``model.translator`` (and SemGAN's semantic dropout)
differ. SemGAN is skipped, with a note, on a cache of sparse lesion masks (as the paper does on
MS-SEG: :func:`~segrenorm.training.resolve.semgan_exclusion`). Runs go to ``OUT/runs/``, the
report to ``OUT/report/``. A translator whose run
already finished there (a ``final.pt`` in a run directory of that translator and config
name) is not trained again, so an interrupted comparison picks up where it stopped.

Example:
    >>> result = compare("cache/", "compare_out/", load_config("cpu"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segrenorm.config.build import config_from_dict
from segrenorm.config.schema import Config, TranslatorKind
from segrenorm.errors import ConfigError
from segrenorm.evaluate.methods import BASELINES
from segrenorm.evaluate.suite import EvaluationConfig
from segrenorm.report.write import ReportPaths

__all__ = ["SEMGAN_DROPOUT", "CompareResult", "compare", "compare_pairs", "translator_config"]

log = logging.getLogger(__name__)

#: SemGAN's semantic-dropout probability when the config leaves it at 0.
SEMGAN_DROPOUT = 0.5


@dataclass(frozen=True)
class CompareResult:
    """What a comparison produced.

    Args:
        runs: translator name -> run directory.
        train_seconds: translator name -> training wall time (0 when reused).
        report: the report's files.
        results: the evaluation's numbers.
    """

    runs: dict[str, Path]
    train_seconds: dict[str, float]
    report: ReportPaths
    results: dict[str, Any]


def translator_config(config: Config, kind: TranslatorKind) -> Config:
    """``config`` with ``kind`` as the translator (SemGAN gets semantic dropout).

    Args:
        config: the shared configuration.
        kind: the translator.
    """
    raw = config.to_dict()
    raw["model"]["translator"] = kind.value
    dropout = float(raw["data"].get("semantic_dropout", 0.0))
    if kind is TranslatorKind.SEMGAN:
        raw["data"]["semantic_dropout"] = dropout or SEMGAN_DROPOUT
    else:
        raw["data"]["semantic_dropout"] = 0.0
    return config_from_dict(raw).validate()


def compare(
    cache: str | Path,
    out: str | Path,
    config: Config,
    *,
    translators: Sequence[str] | None = None,
    baselines: Sequence[str] = BASELINES,
    evaluation: EvaluationConfig | None = None,
    device: str = "cpu",
    progress: bool = False,
    on_stage: Callable[[str], None] | None = None,
) -> CompareResult:
    """Train each translator (or reuse its finished run) and evaluate all of them.

    Args:
        cache: the slice cache.
        out: the comparison folder (``runs/`` and ``report/`` inside).
        config: the shared training configuration.
        translators: names among cyclegan, s-cyclegan, semgan, segrenorm (default: all).
        baselines: classical baselines in the report (default: every classical pipeline).
        evaluation: budgets of the evaluation lenses.
        device: where evaluation runs (training follows ``config.run.device``).
        progress: show training progress bars.
        on_stage: progress callback.

    Raises:
        ConfigError: an unknown translator or baseline name, or semgan alone on a cache of
            sparse lesion masks.
    """
    from segrenorm.training.runlog import find_finished_run
    from segrenorm.training.trainer import train
    from segrenorm.workflows.evaluate import evaluate_cache

    known = {k.value: k for k in TranslatorKind}
    names = list(translators or known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(
            f"unknown translator(s) {', '.join(map(repr, unknown))}: choose from {', '.join(known)}"
        )
    wrong = [b for b in baselines if b not in BASELINES]
    if wrong:  # before any training, not after it
        raise ConfigError(
            f"unknown baseline(s) {', '.join(map(repr, wrong))}: choose from {', '.join(BASELINES)}"
        )
    say = on_stage or (lambda text: log.info("%s", text))
    skipped: dict[str, str] = {}
    if TranslatorKind.SEMGAN.value in names:
        from segrenorm.data.slice_cache import SliceCache
        from segrenorm.training.resolve import semgan_exclusion

        pair = (config.data.source, config.data.target)
        why = semgan_exclusion(SliceCache.open(cache, pair=pair))
        if why is not None:  # sparse lesion masks: the paper leaves SemGAN out too
            names.remove(TranslatorKind.SEMGAN.value)
            skipped[TranslatorKind.SEMGAN.value] = why
            say(f"semgan: skipped: {why}")
        if not names:
            raise ConfigError(f"no translator left to compare: {why}")
    root = Path(out)
    runs_dir = root / "runs"
    runs: dict[str, Path] = {}
    seconds: dict[str, float] = {}
    for name in names:
        cfg = translator_config(config, known[name])
        kind = cfg.model.translator.value
        if cfg.data.source is not None and cfg.data.target is not None:
            kind += f"-{cfg.data.source}-to-{cfg.data.target}"  # a pair run's folder name
        done = find_finished_run(runs_dir, cfg.name, kind)
        if done is not None:
            say(f"{name}: reusing finished run {done}")
            runs[name], seconds[name] = done, 0.0
            continue
        say(f"{name}: training {cfg.optim.total_iterations} iterations")
        start = time.perf_counter()
        runs[name] = train(cfg, cache, runs_dir, progress=progress)
        seconds[name] = time.perf_counter() - start
    iterations = config.optim.total_iterations
    paths, results = evaluate_cache(
        cache,
        root / "report",
        models=runs,
        baselines=baselines,
        config=evaluation,
        device=device,
        title=f"segrenorm compare: {config.name} config, {iterations} iterations each",
        on_stage=say,
        extra={"train_seconds": seconds, "train_config": config.to_dict(), "skipped": skipped},
    )
    return CompareResult(runs=runs, train_seconds=seconds, report=paths, results=results)


def compare_pairs(
    cache: str | Path,
    out: str | Path,
    config: Config,
    pairs: Sequence[tuple[str, str]],
    **options: Any,
) -> dict[tuple[str, str], CompareResult]:
    """:func:`compare` once per (source, target) pair of a many-site cache.

    Each pair is compared in ``OUT/<source>-to-<target>/`` (its ``runs/`` and ``report/``),
    with ``config`` set to the pair (``data.source``/``data.target``); every pair is checked
    (:func:`~segrenorm.workflows.pairs.resolve_pairs`) before any training. A finished run of
    a pair is reused as :func:`compare` reuses one.

    Args:
        cache: the slice cache.
        out: the folder holding one comparison folder per pair.
        config: the shared training configuration (no ``data.source``/``data.target``).
        pairs: ``(source, target)`` site names or cache keys, in order.
        **options: the keyword arguments of :func:`compare` (translators, baselines, ...).

    Returns:
        ``(source, target)`` names -> that pair's :class:`CompareResult`.

    Raises:
        ConfigError: as :func:`~segrenorm.workflows.pairs.resolve_pairs` and :func:`compare`.
    """
    from segrenorm.workflows.pairs import pair_config, resolve_pairs

    named = resolve_pairs(config, cache, pairs)
    say = options.get("on_stage") or (lambda text: log.info("%s", text))
    results = {}
    for source, target in named:
        say(f"pair {source} -> {target}")
        folder = Path(out) / re.sub(r"[^A-Za-z0-9_.-]", "_", f"{source}-to-{target}")
        results[(source, target)] = compare(cache, folder, pair_config(config, source, target),
                                            **options)  # fmt: skip
    return results
