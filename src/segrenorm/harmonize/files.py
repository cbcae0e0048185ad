"""Harmonize files and folders: output naming, safety checks, sharding and the summary table.

Outputs keep the input's file name inside the output folder. The output folder must not be
an input folder, and no output may resolve to an input file, so an input is never
overwritten. A file that fails (unreadable, not 3D, ...) is reported and the others are
still processed; the caller turns failures into a non-zero exit code. Under ``torchrun``,
rank ``r`` of ``N`` harmonizes files ``r, r + N, ...`` and rank 0 prints the table.
:func:`harmonize_paths` is the whole ``segrenorm harmonize`` command: it loads the models,
joins the ``torchrun`` process group, shows progress and gathers every rank's results.
On more than two cores a folder is overlapped: the next file is read while one is
translated and the previous one written (:mod:`segrenorm.harmonize.pipeline`), with outputs
bit for bit those of one file after another.

Example:
    >>> summary = harmonize_paths(["scans/"], "harmonized/", "runs/00000-ixi")  # doctest: +SKIP
    >>> print(summary.table())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from segrenorm.atomic import remove_stale_temporaries
from segrenorm.errors import ConfigError, InputError
from segrenorm.harmonize.fusion import BatchCallback
from segrenorm.harmonize.harmonizer import HarmonizeOptions, Harmonizer
from segrenorm.harmonize.outcomes import (
    PER_FILE_ERRORS,
    FileCallback,
    FileResult,
    existing_output,
    failure,
    failure_reason,
)
from segrenorm.harmonize.pipeline import harmonize_overlapped
from segrenorm.training.distributed import DistContext, init_distributed, shutdown_distributed
from segrenorm.volumes.paths import find_images, image_suffix
from segrenorm.volumes.readwrite import save_image

__all__ = [
    "FileResult",
    "HarmonizeSummary",
    "gather_results",
    "harmonize_files",
    "harmonize_one",
    "harmonize_paths",
    "plan_outputs",
    "summary_table",
]

log = logging.getLogger(__name__)


def plan_outputs(inputs: Sequence[str | Path], out_dir: str | Path) -> list[tuple[Path, Path]]:
    """Expand inputs and pair each with its output path, refusing anything unsafe.

    Args:
        inputs: files, folders or glob patterns.
        out_dir: the output folder.

    Raises:
        InputError: no input, the output folder is (or resolves to) an input's folder, two
            inputs share a file name, or an output path is an input file.
    """
    files = find_images(list(inputs))
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: give a folder for the harmonized volumes")
    out_resolved = out.resolve()
    folders = {f.resolve().parent for f in files}
    if out_resolved in folders:
        raise InputError(
            f"--out {out} is the folder the input volumes are in; harmonized volumes keep "
            "their file names, so they would replace the inputs. Choose another folder."
        )
    by_name: dict[str, Path] = {}
    for f in files:
        if f.name in by_name:
            raise InputError(
                f"{by_name[f.name]} and {f} have the same file name, so their outputs would "
                f"collide in {out}; harmonize them into separate folders."
            )
        by_name[f.name] = f
    resolved_inputs = {f.resolve() for f in files}
    plan = [(f, out / f.name) for f in files]
    for src, dst in plan:
        if dst.resolve() in resolved_inputs:
            raise InputError(f"{dst} is an input file; refusing to overwrite it (from {src}).")
        image_suffix(dst)
    return plan


def harmonize_files(
    harmonizer: Harmonizer,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    skip_existing: bool = False,
    overwrite: bool = False,
    ctx: DistContext | None = None,
    on_file: FileCallback | None = None,
    on_batch: BatchCallback | None = None,
    overlap: bool | None = None,
) -> list[FileResult]:
    """Harmonize every input volume into ``out_dir`` (this rank's share under torchrun).

    With ``overlap`` (the default) the next file is read and prepared in a background thread
    while one is translated, and the previous one is finished and written in another
    (:func:`~segrenorm.harmonize.pipeline.run_overlapped`): the outputs are bit for bit those
    of one file after another, with two more volumes in memory.

    Args:
        harmonizer: the loaded models and options.
        inputs: files, folders or glob patterns.
        out_dir: the output folder (created if needed).
        skip_existing: leave an existing output as it is and report it as skipped.
        overwrite: replace an existing output (never an input).
        ctx: the distributed context; None means a single process.
        on_file: progress callback per file.
        on_batch: progress callback per slice batch.
        overlap: overlap reading, translating and writing across files; None (the default):
            only with more than two CPU cores (on two, the reader's N4 and the writer's
            compression compete with translation for the cores: 0.93x measured,
            BENCHMARKS.md).

    Returns:
        This rank's results in input order (see :func:`gather_results` for all ranks').

    Raises:
        InputError: the plan is unsafe (see :func:`plan_outputs`); a bad individual file is
            reported in its result instead.
    """
    plan = plan_outputs(inputs, out_dir)
    rank, world = (ctx.rank, ctx.world_size) if ctx is not None else (0, 1)
    share = plan[rank::world]
    Path(out_dir).expanduser().mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(Path(out_dir).expanduser())  # partial outputs of killed runs
    if overlap is None:
        overlap = (os.cpu_count() or 1) > 2
    if overlap and len(share) > 1:
        return harmonize_overlapped(
            harmonizer, share, skip_existing=skip_existing, overwrite=overwrite, rank=rank,
            on_file=on_file, on_batch=on_batch,
        )  # fmt: skip
    results: list[FileResult] = []
    for index, (src, dst) in enumerate(share):
        if on_file is not None:
            on_file(index, len(share), src)
        result = harmonize_one(
            harmonizer, src, dst, skip_existing=skip_existing, overwrite=overwrite,
            rank=rank, on_batch=on_batch,
        )  # fmt: skip
        results.append(result)
    return results


def harmonize_one(
    harmonizer: Harmonizer,
    src: Path,
    dst: Path,
    *,
    skip_existing: bool = False,
    overwrite: bool = False,
    rank: int = 0,
    on_batch: BatchCallback | None = None,
    site: str | None = None,
) -> FileResult:
    """Harmonize one planned file (see :func:`plan_outputs`) and report how it went.

    Args:
        harmonizer: the loaded models and options.
        src: the input volume.
        dst: its output path.
        skip_existing: leave an existing output as it is and report it as skipped.
        overwrite: replace an existing output (never an input).
        rank: the process handling it, recorded in the result.
        on_batch: progress callback per slice batch.
        site: the volume's site, when known: a site the model never saw gives a warning
            (:meth:`~segrenorm.data.facts.TrainingFacts.site_notes`).

    Returns:
        The file's result; a failure of this file is reported in it, never raised.
    """
    early = existing_output(src, dst, skip_existing, overwrite, rank)
    if early is not None:
        return early
    start = time.perf_counter()
    try:
        result = harmonizer.run(src, on_batch=on_batch, site=site)
        image = result.image
        save_image(image.data, dst, geometry=image.geometry, overwrite=overwrite)
    except PER_FILE_ERRORS as exc:
        return failure(src, dst, failure_reason(exc), time.perf_counter() - start, rank)
    for note in result.notes:
        log.warning("%s", note)
    seconds = time.perf_counter() - start
    return FileResult(src, dst, "ok", seconds, " ".join(result.notes), rank)


def gather_results(results: list[FileResult], ctx: DistContext | None) -> list[FileResult]:
    """Every rank's results on every rank, in input order (plain list when not distributed).

    Args:
        results: this rank's results.
        ctx: the distributed context.
    """
    if ctx is None or not ctx.enabled:
        return list(results)
    import torch.distributed as dist

    boxes: list[list[FileResult] | None] = [None] * ctx.world_size
    dist.all_gather_object(boxes, results)
    merged: list[FileResult] = []
    shares = [box or [] for box in boxes]
    # Rank r holds files r, r + N, ...: interleave to restore the input order.
    for i in range(max((len(s) for s in shares), default=0)):
        merged.extend(share[i] for share in shares if i < len(share))
    return merged


def summary_table(results: Sequence[FileResult], *, width: int = 100) -> str:
    """A plain-text table: file, status, seconds, output or error; then the totals.

    Args:
        results: all files' results.
        width: longest message shown before it is cut with an ellipsis.
    """
    rows = [("file", "status", "seconds", "output / message")]
    for r in results:
        detail = r.message if r.status == "failed" or r.output is None else str(r.output)
        if r.status == "ok" and r.message:
            detail += " (warning: " + r.message + ")"
        if len(detail) > width:
            detail = detail[: width - 1] + "…"
        rows.append((r.input.name, r.status, f"{r.seconds:.1f}", detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3] for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  " + "-" * 16)
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "skipped", "failed")}
    lines.append(
        f"{len(results)} file(s): {counts['ok']} harmonized, {counts['skipped']} skipped, "
        f"{counts['failed']} failed"
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class HarmonizeSummary:
    """What :func:`harmonize_paths` did, over every rank.

    Args:
        results: all files' results, in input order.
        is_main: whether this process is the one that reports (rank 0 under ``torchrun``).
        notes: lines printed under the table (e.g. rows left as they were, and why).
    """

    results: tuple[FileResult, ...]
    is_main: bool = True
    notes: tuple[str, ...] = ()

    @property
    def failed(self) -> bool:
        """Whether any file failed (the command then exits with 1)."""
        return any(r.status == "failed" for r in self.results)

    def table(self) -> str:
        """The plain-text summary table (see :func:`summary_table`), then the notes."""
        return "\n".join([summary_table(self.results), *self.notes])


def harmonize_paths(
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    model: str | Path | Mapping[str, str | Path],
    *,
    options: HarmonizeOptions | None = None,
    views: str | Sequence[str] | None = None,
    device: str = "auto",
    compile: bool = False,
    skip_existing: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    overlap: bool | None = None,
) -> HarmonizeSummary:
    """Load a model and harmonize volumes, folders or globs into ``out_dir``.

    Under ``torchrun`` every process takes its share of the files (see
    :func:`harmonize_files`) and every process gets all results back.

    Args:
        inputs: files, folders or glob patterns.
        out_dir: the output folder (created if needed).
        model: a run directory or checkpoint, or plane -> run for one model per view.
        options: harmonization options (direction, batch size, dtype, ...).
        views: planes to translate along and fuse (one model only; default its plane).
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        compile: use ``torch.compile``.
        skip_existing: keep outputs that already exist, reported as skipped.
        overwrite: replace existing outputs (never inputs).
        progress: print each file to stderr and show a slice bar on a terminal (files are
            always printed, with their rank, under ``torchrun``).
        overlap: read the next file and write the previous one while one is translated;
            None picks by the machine's cores (see :func:`harmonize_files`).

    Returns:
        Every file's result; its notes give the slice batch used (``auto``: the one timed).

    Raises:
        ConfigError: ``views`` given with one model per view, or bad options.
        InputError: the output plan is unsafe (see :func:`plan_outputs`), checked before
            any model is loaded.
        CheckpointError: a model cannot be loaded.
    """
    options = options or HarmonizeOptions()
    if isinstance(model, Mapping) and views:
        raise ConfigError("--views and PLANE=RUN models both pick the views: give only one")
    plan_outputs(inputs, out_dir)  # refuse an unsafe output folder before loading models
    ctx = init_distributed(device)
    try:
        if isinstance(model, Mapping):
            harmonizer = Harmonizer.load_per_view(
                model, device=ctx.device, compile=compile, **asdict(options)
            )
        else:
            harmonizer = Harmonizer.load(
                model, views=views, device=ctx.device, compile=compile, **asdict(options)
            )
        prefix = f"[rank {ctx.rank}] " if ctx.world_size > 1 else ""

        def on_file(index: int, total: int, path: Path) -> None:
            print(f"{prefix}[{index + 1}/{total}] {path}", file=sys.stderr, flush=True)

        bar = tqdm(unit="slice", leave=False, disable=not progress or not sys.stderr.isatty())

        def on_batch(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        tiles = {v: harmonizer.tile_of(m) for v, m in harmonizer.models.items()}
        log.info(
            "harmonizing to %s (%s, views %s, batch %s, tiles %s) on %s",
            harmonizer.target_name,
            options.direction,
            ",".join(harmonizer.views),
            options.batch_size,
            ",".join(f"{v}={t or 'whole slices'}" for v, t in tiles.items()),
            ctx.device,
        )
        mine = harmonize_files(
            harmonizer,
            inputs,
            out_dir,
            skip_existing=skip_existing,
            overwrite=overwrite,
            ctx=ctx,
            on_file=on_file if progress or ctx.world_size > 1 else None,
            on_batch=None if bar.disable else on_batch,
            overlap=overlap,
        )
        bar.close()
        results = gather_results(mine, ctx)
    finally:
        shutdown_distributed(ctx)
    notes = tuple(choice.note() for choice in harmonizer.batch_choices.values())
    return HarmonizeSummary(tuple(results), ctx.is_main, notes)
