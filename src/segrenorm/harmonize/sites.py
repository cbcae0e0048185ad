"""Harmonize a listing of several sites: each row with the model trained on the row's site.

``segrenorm harmonize --csv LISTING --model RUN [--model RUN ...]`` reads a listing with the
columns ``subject, site, image`` (the CSV ``prepare`` reads) and one model per source site,
all toward one target (as ``segrenorm train --to TARGET`` makes them). Each row goes
through the model whose source site is the row's site; rows already at the target site are
left as they are and counted; a row of a site no model saw is harmonized with a warning when
there is exactly one model and refused when there are several (which one would be right?).
Every output keeps the input's file name in ``--out``; ``OUT/harmonize-by-site.json``
records which model translated which row.

Example:
    >>> summary = harmonize_listing("study.csv", "harmonized/", ["runs/"])  # doctest: +SKIP
    >>> print(summary.table())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segrenorm.atomic import write_json_atomic
from segrenorm.data.listing import SubjectRecord, read_listing
from segrenorm.errors import ConfigError, InputError
from segrenorm.harmonize.files import (
    FileResult,
    HarmonizeSummary,
    gather_results,
    harmonize_one,
    plan_outputs,
)
from segrenorm.harmonize.fusion import parse_views
from segrenorm.harmonize.harmonizer import HarmonizeOptions, Harmonizer, ViewModel, load_view_model
from segrenorm.training.distributed import init_distributed, shutdown_distributed

__all__ = ["RECORD_NAME", "choose_models", "expand_models", "harmonize_listing"]

log = logging.getLogger(__name__)

#: The file in the output folder that records each row's model.
RECORD_NAME = "harmonize-by-site.json"


def _is_run(folder: Path) -> bool:
    return (folder / "final.pt").is_file() or (folder / "checkpoints" / "last.pt").is_file()


def expand_models(paths: Sequence[str | Path]) -> list[Path]:
    """The checkpoints or run folders that ``--model`` values name.

    A value is a checkpoint file, a run folder, or a folder holding run folders: then every
    finished run in it (one with ``final.pt``), in name order.

    Args:
        paths: the ``--model`` values.

    Raises:
        InputError: a path that does not exist, or a folder holding no run.
    """
    found: list[Path] = []
    for value in paths:
        path = Path(value).expanduser()
        if not path.exists():
            raise InputError(f"--model {path} does not exist: give a run folder or checkpoint")
        if path.is_file() or _is_run(path):
            found.append(path)
            continue
        runs = sorted(p for p in path.iterdir() if p.is_dir() and (p / "final.pt").is_file())
        if not runs:
            raise InputError(
                f"--model {path} is neither a run (final.pt or checkpoints/last.pt) nor a "
                "folder of finished runs: train with segrenorm train --to TARGET first"
            )
        found.extend(runs)
    return list(dict.fromkeys(found))


def _pair_text(model: ViewModel, direction: str) -> str:
    facts = model.facts
    return f"{model.source} ({facts.source_name(direction)} -> {facts.target_name(direction)})"


def choose_models(
    records: Sequence[SubjectRecord], models: Sequence[ViewModel], direction: str, where: str
) -> tuple[str, list[ViewModel | None]]:
    """The target site, and the model of each row (None: the row is at the target site).

    Args:
        records: the listing's rows.
        models: the loaded models.
        direction: ``"AB"`` or ``"BA"`` (which generator of each model is used).
        where: the listing, for messages.

    Raises:
        ConfigError: models toward different targets, two models for one source site, or,
            with several models, rows of a site none of them was trained on.
    """
    if not models:
        raise ConfigError("harmonize --csv needs at least one --model")
    targets = {m.facts.target_name(direction) for m in models}
    if len(targets) > 1:
        listed = "; ".join(_pair_text(m, direction) for m in models)
        raise ConfigError(
            f"the models translate toward different sites: {listed}; harmonize toward one "
            "target per call"
        )
    target = targets.pop()
    by_source: dict[str, ViewModel] = {}
    for model in models:
        source = model.facts.source_name(direction)
        if source in by_source:
            raise ConfigError(
                f"two models translate site {source} to {target}: "
                f"{_pair_text(by_source[source], direction)} and {_pair_text(model, direction)}; "
                "give one model per source site"
            )
        by_source[source] = model
    chosen: list[ViewModel | None] = []
    unseen: dict[str, int] = {}
    for record in records:
        if record.site == target:
            chosen.append(None)
        elif record.site in by_source:
            chosen.append(by_source[record.site])
        elif len(models) == 1:
            chosen.append(models[0])  # harmonized, with the model's warning (site_notes)
        else:
            unseen[record.site] = unseen.get(record.site, 0) + 1
            chosen.append(None)
    if unseen:
        sites = ", ".join(f"{site} ({n} row(s))" for site, n in unseen.items())
        listed = "; ".join(_pair_text(m, direction) for m in models)
        raise ConfigError(
            f"{where}: no model was trained on site(s) {sites}; the models are {listed}. "
            "Train one with segrenorm train --to "
            f"{target}, give only one model to apply it anyway (with a warning), or drop "
            "those rows"
        )
    return target, chosen


def harmonize_listing(
    csv: str | Path,
    out_dir: str | Path,
    models: Sequence[str | Path],
    *,
    options: HarmonizeOptions | None = None,
    views: str | Sequence[str] | None = None,
    device: str = "auto",
    compile: bool = False,
    skip_existing: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> HarmonizeSummary:
    """Harmonize every row of a listing with the model trained on the row's site.

    The plan (output names, models, sites) is checked before any volume is read; under
    ``torchrun`` every process takes its share of the rows.

    Args:
        csv: a listing with ``subject, site, image`` columns (see
            :func:`~segrenorm.data.listing.read_listing`).
        out_dir: the output folder (created if needed).
        models: run folders, checkpoints, or folders of runs (see :func:`expand_models`).
        options: harmonization options (direction, batch size, dtype, ...).
        views: planes to translate along and fuse (default each model's training plane).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        compile: use ``torch.compile``.
        skip_existing: keep outputs that already exist, reported as skipped.
        overwrite: replace existing outputs (never inputs).
        progress: print each row to stderr.

    Returns:
        The results in listing order, rows at the target site as ``skipped``; its notes
        count them.

    Raises:
        InputError: a bad listing or an unsafe output plan (see
            :func:`~segrenorm.harmonize.files.plan_outputs`).
        ConfigError: see :func:`choose_models`.
        CheckpointError: a model cannot be loaded.
    """
    options = options or HarmonizeOptions()
    records = read_listing(csv)
    plan = plan_outputs([r.image for r in records], out_dir)
    paths = expand_models(models)
    ctx = init_distributed(device)
    try:
        loaded = [load_view_model(path, ctx.device) for path in paths]
        target, chosen = choose_models(records, loaded, options.direction, str(csv))
        harmonizers: dict[Path, Harmonizer] = {}
        for view_model in loaded:
            planes = parse_views(views, view_model.facts.slice_axis)
            harmonizers[view_model.source] = Harmonizer(
                {v: view_model for v in planes}, options, device=ctx.device, compile=compile
            )
        rows = list(zip(records, plan, chosen, strict=True))
        Path(out_dir).expanduser().mkdir(parents=True, exist_ok=True)
        mine: list[FileResult] = []
        share = rows[ctx.rank :: ctx.world_size]
        for index, (record, (src, dst), model) in enumerate(share):
            if progress:
                print(f"[{index + 1}/{len(share)}] {src} ({record.site})", file=sys.stderr)
            if model is None:
                message = f"already at the target site {target}: not translated"
                mine.append(FileResult(src, None, "skipped", 0.0, message, ctx.rank))
                continue
            result = harmonize_one(
                harmonizers[model.source], src, dst, skip_existing=skip_existing,
                overwrite=overwrite, rank=ctx.rank, site=record.site,
            )  # fmt: skip
            mine.append(result)
        results = gather_results(mine, ctx)
    finally:
        shutdown_distributed(ctx)
    at_target = sum(model is None for model in chosen)
    notes = []
    if at_target:
        notes.append(
            f"{at_target} row(s) of site {target} are already at the target site and were not "
            "translated"
        )
        log.info("%s", notes[-1])
    if ctx.is_main:
        _write_record(Path(out_dir).expanduser(), rows, results, options.direction, target)
    return HarmonizeSummary(tuple(results), ctx.is_main, tuple(notes))


def _write_record(
    out: Path,
    rows: list[tuple[SubjectRecord, tuple[Path, Path], ViewModel | None]],
    results: Sequence[FileResult],
    direction: str,
    target: str,
) -> None:
    """``OUT/harmonize-by-site.json``: each row's site, model, pair, status and output."""
    entries: list[dict[str, Any]] = []
    for (record, _paths, model), result in zip(rows, results, strict=True):
        entries.append(
            {
                "subject": record.subject,
                "site": record.site,
                "input": str(result.input),
                "output": None if result.output is None else str(result.output),
                "status": result.status,
                "model": None if model is None else str(model.source),
                "model_source": None if model is None else model.facts.source_name(direction),
                "message": result.message,
            }
        )
    options = {"direction": direction, "target": target}
    write_json_atomic(out / RECORD_NAME, {**options, "rows": entries})
