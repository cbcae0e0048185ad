"""Overlap reading, translating and writing across a sequence of jobs, one job ahead.

While job ``k`` is translated on the calling thread, job ``k + 1`` is read in a reader
thread and job ``k - 1`` is written in a writer thread. Each thread runs one job at a time
and the next read or write is only handed over once the previous one is done, so at most
three jobs are in memory: two more than one after another. Reading and writing volumes spend
their time in zlib, file I/O and NumPy, which release the GIL; the model keeps the calling
thread (and its device) to itself. Every job passes the three stages in order and each stage
sees jobs in input order, so a job's results do not depend on the overlap.

The stages must not raise for a bad job (they record the failure in the job and the later
stages pass it by); an exception that escapes one (a bug, an interrupt) stops the sequence and
is raised here once the other threads have finished the job they hold.

Example:
    >>> log = []
    >>> run_overlapped([1, 2], lambda j: log.append(("read", j)), lambda j: None,
    ...                lambda j: None, on_done=lambda i: log.append(("done", i)))
    >>> log
    [('read', 1), ('read', 2), ('done', 0), ('done', 1)]
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

from segrenorm.harmonize.fusion import BatchCallback
from segrenorm.harmonize.harmonizer import Harmonizer, PreparedVolume
from segrenorm.harmonize.outcomes import (
    PER_FILE_ERRORS,
    FileCallback,
    FileResult,
    existing_output,
    failure,
    failure_reason,
)
from segrenorm.volumes.readwrite import save_image

__all__ = ["harmonize_overlapped", "run_overlapped"]

log = logging.getLogger("segrenorm.harmonize.files")  # the logger harmonize always used

Job = TypeVar("Job")


def run_overlapped(
    jobs: Sequence[Job],
    read: Callable[[Job], None],
    compute: Callable[[Job], None],
    write: Callable[[Job], None],
    *,
    on_start: Callable[[int], None] | None = None,
    on_done: Callable[[int], None] | None = None,
) -> None:
    """Run ``read``, ``compute`` and ``write`` on every job, overlapping neighbouring jobs.

    Args:
        jobs: the jobs, in order; the stages record their results in them.
        read: the first stage, run in the reader thread one job ahead of ``compute``.
        compute: the second stage, run on the calling thread.
        write: the last stage, run in the writer thread while the next job is computed.
        on_start: called on the calling thread with a job's index before its ``compute``.
        on_done: called on the calling thread with a job's index once its ``write`` ended,
            in input order.

    Raises:
        Exception: whatever a stage raised (see the module docstring).
    """
    if not jobs:
        return
    with (
        ThreadPoolExecutor(1, thread_name_prefix="segrenorm-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="segrenorm-write") as writer,
    ):
        ahead = reader.submit(read, jobs[0])
        writing: Future[None] | None = None
        for index, job in enumerate(jobs):
            ahead.result()  # job ``index`` is read (re-raises what the read raised)
            if index + 1 < len(jobs):
                ahead = reader.submit(read, jobs[index + 1])
            if on_start is not None:
                on_start(index)
            compute(job)
            if writing is not None:  # one write at a time bounds the memory held
                writing.result()
                if on_done is not None:
                    on_done(index - 1)
            writing = writer.submit(write, job)
        if writing is not None:
            writing.result()
            if on_done is not None:
                on_done(len(jobs) - 1)


@dataclass
class _Job:
    """One file on its way through the overlapped stages."""

    src: Path
    dst: Path
    prepared: PreparedVolume | None = None
    fused: np.ndarray | None = None
    result: FileResult | None = None
    notes: tuple[str, ...] = ()
    error: bool = False  # failed while being harmonized (logged, as harmonize_one does)


def harmonize_overlapped(
    harmonizer: Harmonizer,
    share: Sequence[tuple[Path, Path]],
    *,
    skip_existing: bool,
    overwrite: bool,
    rank: int,
    on_file: FileCallback | None,
    on_batch: BatchCallback | None,
) -> list[FileResult]:
    """:func:`~segrenorm.harmonize.files.harmonize_one` on every planned file, overlapped.

    Each file is read and prepared in the reader thread, translated here, then finished and
    written in the writer thread (:func:`run_overlapped`); results, messages and logs are
    those of one file after another.

    Args:
        harmonizer: the loaded models and options.
        share: (input, output) pairs of this process, in order.
        skip_existing: keep an existing output, reported as skipped.
        overwrite: replace an existing output.
        rank: the process, recorded in the results.
        on_file: called before each file is translated.
        on_batch: progress callback per slice batch.

    Returns:
        The results in input order.
    """
    jobs = [_Job(src, dst) for src, dst in share]

    def fail(job: _Job, exc: BaseException, seconds: float) -> None:
        job.result = failure(job.src, job.dst, failure_reason(exc), seconds, rank, report=False)
        job.error, job.prepared, job.fused = True, None, None

    def read(job: _Job) -> None:
        job.result = existing_output(job.src, job.dst, skip_existing, overwrite, rank)
        if job.result is not None:
            return
        start = time.perf_counter()
        try:
            job.prepared = harmonizer.prepare(job.src)
        except PER_FILE_ERRORS as exc:
            fail(job, exc, time.perf_counter() - start)

    def compute(job: _Job) -> None:
        if job.prepared is None:
            return
        start, before = time.perf_counter(), job.prepared.seconds
        try:
            job.fused = harmonizer.translate(job.prepared, on_batch=on_batch)
        except PER_FILE_ERRORS as exc:
            fail(job, exc, before + time.perf_counter() - start)

    def write(job: _Job) -> None:
        if job.prepared is None or job.fused is None:
            return
        start, before = time.perf_counter(), job.prepared.seconds
        try:
            done = harmonizer.finish(job.prepared, job.fused)
            job.prepared = job.fused = None  # free the working copies before the write
            save_image(done.image.data, job.dst, geometry=done.image.geometry, overwrite=overwrite)
        except PER_FILE_ERRORS as exc:
            fail(job, exc, before + time.perf_counter() - start)
            return
        seconds = before + time.perf_counter() - start
        job.notes = done.notes
        job.result = FileResult(job.src, job.dst, "ok", seconds, " ".join(done.notes), rank)

    def start(index: int) -> None:
        if on_file is not None:
            on_file(index, len(jobs), jobs[index].src)

    def report(index: int) -> None:  # in input order, on this thread, as harmonize_one logs
        job = jobs[index]
        if job.error and job.result is not None:
            log.error("%s: %s", job.src, job.result.message)
        for note in job.notes:
            log.warning("%s", note)

    run_overlapped(jobs, read, compute, write, on_start=start, on_done=report)
    return [job.result for job in jobs if job.result is not None]
