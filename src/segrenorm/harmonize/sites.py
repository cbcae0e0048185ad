"""Harmonize a listing of several sites: each row with the model trained on the row's site.

``segrenorm harmonize --csv LISTING --model RUN [--model RUN ...]`` reads a listing with the
columns ``subject, site, image`` (the CSV ``prepare`` reads) and one model per source site,
all toward one target (as ``segrenorm train --to TARGET`` makes them). Each row goes
through the model whose source site is the row's site; rows already at the target site are
left as they are and counted; a row of a site no model saw is harmonized with a warning when
there is exactly one model and refused when there are several (which one would be right?).
Every output keeps the input's file name in a folder per site, ``OUT/<site>/<file name>``
(sites often name their files alike, ``site1/T1.nii.gz`` and ``site2/T1.nii.gz``), so where an
output lands never depends on the other rows; ``OUT/harmonize-by-site.json`` records which
model translated which row and where its output is.

Example:
    >>> summary = harmonize_listing("study.csv", "harmonized/", ["runs/"])  # doctest: +SKIP
    >>> print(summary.table())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segrenorm.atomic import remove_stale_temporaries, write_json_atomic
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
from segrenorm.models.checkpoint import resolve_checkpoint
from segrenorm.training.distributed import init_distributed, shutdown_distributed

__all__ = ["RECORD_NAME", "choose_models", "expand_models", "harmonize_listing", "site_folder"]

log = logging.getLogger(__name__)

#: The file in the output folder that records each row's model.
RECORD_NAME = "harmonize-by-site.json"


def _is_run(folder: Path) -> bool:
    return (folder / "final.pt").is_file() or (folder / "checkpoints" / "last.pt").is_file()


def expand_models(paths: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """The checkpoint files that ``--model`` values name, each once.

    A value is a checkpoint file, a run folder (its ``final.pt``, else
    ``checkpoints/last.pt``), or a folder holding run folders: then every finished run in it
    (one with ``final.pt``), in name order; its unfinished runs are skipped and named in a
    note. One checkpoint reached twice (``--model RUN --model RUN/final.pt``) counts once.

    Args:
        paths: the ``--model`` values.

    Returns:
        ``(checkpoint files, notes)``: the notes name the skipped unfinished runs.

    Raises:
        InputError: a path that does not exist, or a folder holding no run.
    """
    found: list[Path] = []
    notes: list[str] = []
    for value in paths:
        path = Path(value).expanduser()
        if not path.exists():
            raise InputError(f"--model {path} does not exist: give a run folder or checkpoint")
        if path.is_file() or _is_run(path):
            found.append(resolve_checkpoint(path, prefer=("final.pt", "last.pt")))
            continue
        runs = sorted(p for p in path.iterdir() if p.is_dir() and _is_run(p))
        finished = [p for p in runs if (p / "final.pt").is_file()]
        if not finished:
            raise InputError(
                f"--model {path} is neither a run (final.pt or checkpoints/last.pt) nor a "
                "folder of finished runs: train with segrenorm train --to TARGET first"
            )
        unfinished = [p.name for p in runs if p not in finished]
        if unfinished:
            notes.append(
                f"--model {path}: skipped {len(unfinished)} unfinished run(s) without final.pt "
                f"({', '.join(unfinished)}); finish them (segrenorm train --resume RUN) or give "
                "one as --model RUN to use its last.pt"
            )
            log.warning("%s", notes[-1])
        found.extend(p / "final.pt" for p in finished)
    by_file = {f.resolve(): f for f in reversed(found)}  # the first spelling of each file
    return [by_file[r] for r in dict.fromkeys(f.resolve() for f in found)], notes


#: Characters a site folder of ``harmonize --csv`` keeps; others become ``_``.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def site_folder(site: str) -> str:
    """The folder of ``OUT`` that a site's outputs go to: its name, file-name safe.

    Args:
        site: the site's name in the listing.

    Returns:
        The name with every character other than letters, digits, ``.``, ``_`` and ``-``
        replaced by ``_`` (and ``.``/``..`` as ``_``), e.g. ``"Guy's"`` -> ``"Guy_s"``.
    """
    folder = _UNSAFE.sub("_", site)
    return "_" if folder in (".", "..") else folder


def _plan_by_site(
    records: Sequence[SubjectRecord], chosen: Sequence[ViewModel | None], out: Path, where: str
) -> list[tuple[Path, Path | None]]:
    """``(input, output)`` per row: ``OUT/<site folder>/<file name>``, None at the target.

    Raises:
        InputError: two sites with one folder name, two rows of a site with one file name,
            or an output that is an input of the listing (or in an input's folder).
    """
    folders: dict[str, str] = {}
    by_folder: dict[str, list[SubjectRecord]] = {}
    for record, model in zip(records, chosen, strict=True):
        if model is None:
            continue
        folder = site_folder(record.site)
        if folders.setdefault(folder, record.site) != record.site:
            raise InputError(
                f"{where}: sites {folders[folder]!r} and {record.site!r} would both write to "
                f"{out / folder} (a site folder keeps letters, digits, '.', '_' and '-'); "
                "rename one of them in the listing"
            )
        by_folder.setdefault(folder, []).append(record)
    planned: dict[tuple[str, Path], Path] = {}
    for folder, rows in by_folder.items():
        named: dict[str, SubjectRecord] = {}
        for record in rows:
            first = named.setdefault(record.image.name, record)
            if first is not record and first.image != record.image:
                raise InputError(
                    f"{where}: subjects {first.subject!r} ({first.image}) and "
                    f"{record.subject!r} ({record.image}) of site {record.site!r} have the same "
                    f"file name, so their outputs would collide in {out / folder}; rename one "
                    "of the files, or harmonize them with separate listings"
                )
        images = list(dict.fromkeys(r.image for r in rows))
        for src, dst in plan_outputs(images, out / folder):
            planned[(folders[folder], src)] = dst
    inputs = {r.image.resolve() for r in records}
    for dst in planned.values():
        if dst.resolve() in inputs:
            raise InputError(f"{dst} is an input of {where}; refusing to overwrite it")
    return [
        (r.image, None if m is None else planned[(r.site, r.image)])
        for r, m in zip(records, chosen, strict=True)
    ]


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
    ``torchrun`` every process takes its share of the rows. A translated row is written to
    ``OUT/<site>/<its file name>`` (:func:`site_folder`); rows at the target site are
    planned no output.

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
        InputError: a bad listing or an unsafe output plan: two rows of a site with one
            file name, two sites with one folder, or an output that is an input (see
            :func:`~segrenorm.harmonize.files.plan_outputs`).
        ConfigError: see :func:`choose_models`.
        CheckpointError: a model cannot be loaded.
    """
    options = options or HarmonizeOptions()
    records = read_listing(csv)
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: give a folder for the harmonized volumes")
    paths, notes = expand_models(models)
    ctx = init_distributed(device)
    try:
        loaded = [load_view_model(path, ctx.device) for path in paths]
        target, chosen = choose_models(records, loaded, options.direction, str(csv))
        plan = _plan_by_site(records, chosen, out, str(csv))
        harmonizers: dict[Path, Harmonizer] = {}
        for view_model in loaded:
            planes = parse_views(views, view_model.facts.slice_axis)
            harmonizers[view_model.source] = Harmonizer(
                {v: view_model for v in planes}, options, device=ctx.device, compile=compile
            )
        rows = list(zip(records, plan, chosen, strict=True))
        out.mkdir(parents=True, exist_ok=True)
        for folder in dict.fromkeys(dst.parent for _, dst in plan if dst is not None):
            folder.mkdir(exist_ok=True)
            remove_stale_temporaries(folder)  # partial outputs of killed runs
        remove_stale_temporaries(out)  # a record cut short
        mine: list[FileResult] = []
        share = rows[ctx.rank :: ctx.world_size]
        for index, (record, (src, dst), model) in enumerate(share):
            if progress:
                print(f"[{index + 1}/{len(share)}] {src} ({record.site})", file=sys.stderr)
            if model is None or dst is None:
                message = f"already at the target site {target}: not translated"
                mine.append(FileResult(src, None, "skipped", 0.0, message, ctx.rank))
                continue
            result = harmonize_one(
                harmonizers[model.source], src, dst, skip_existing=skip_existing,
                overwrite=overwrite, rank=ctx.rank, site=record.site,
            )  # fmt: skip
            mine.append(result)
        results = gather_results(mine, ctx)
        for harmonizer in harmonizers.values():  # the slice batch of each model (auto: timed)
            notes.extend(choice.note() for choice in harmonizer.batch_choices.values())
    finally:
        shutdown_distributed(ctx)
    at_target = sum(model is None for model in chosen)
    if at_target:
        notes.append(
            f"{at_target} row(s) of site {target} are already at the target site and were not "
            "translated"
        )
        log.info("%s", notes[-1])
    if ctx.is_main:
        _write_record(out, rows, results, options.direction, target)
    return HarmonizeSummary(tuple(results), ctx.is_main, tuple(notes))


def _write_record(
    out: Path,
    rows: list[tuple[SubjectRecord, tuple[Path, Path | None], ViewModel | None]],
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
