"""The records and the report of ``benchmarks/train_speed.py``: jobs, results, merging, output.

What one job is (:class:`Job`), what it measured (:class:`Result`, with the eager reference's
figures in :class:`ReferenceResult`), how the reference's ratios and a better matmul peak are
folded in, how rounds merge, and the printed lines and JSON file. Timing lives in
``train_speed.py``, which re-exports these names; both import as top-level modules from
``benchmarks/``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from segrenorm.atomic import write_json_atomic
from segrenorm.errors import InputError

TARGET_FRACTION = 0.70
TARGET_SPEEDUP = 1.3


@dataclass(frozen=True)
class Job:
    """One measurement to run in its own process.

    Args:
        preset: a preset name of :data:`segrenorm.config.presets.PRESETS`.
        translator: the translator kind.
        iterations: timed iterations.
        warmup: untimed iterations first (the first one also counts FLOPs).
        threads: torch intra-op threads (CPU).
        device: ``cpu`` or ``cuda``.
        compile: wrap the networks with ``torch.compile`` as ``run.compile`` does.
        parallel: run the two cycle directions in two threads (``run.parallel_directions``).
        reference: also time the eager reference, alternating with ours.
        overrides: extra ``section.field=value`` overrides of the preset (tests use tiny ones).
    """

    preset: str
    translator: str
    iterations: int
    warmup: int
    threads: int
    device: str
    compile: bool
    parallel: bool
    reference: bool = True
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class ReferenceResult:
    """The eager reference timed alternately with ours: ``seconds[i]`` ran right after ours.

    Args:
        gflop: FLOPs of one reference iteration, forward and backward, in GFLOP.
        seconds: its timed iterations, aligned with :attr:`Result.seconds`.
        best_s: fastest iteration.
        median_s: median iteration.
        gflops: ``gflop / best_s``.
        fraction: ``gflops`` over the job's matmul peak.
        speedup: the reference's best time over ours (above 1: ours is faster).
        paired_speedup: median over the alternating pairs of reference over ours.
    """

    gflop: float
    seconds: list[float]
    best_s: float
    median_s: float
    gflops: float
    fraction: float
    speedup: float
    paired_speedup: float


@dataclass(frozen=True)
class Result:
    """What one job measured (times in seconds, rates in GFLOP/s, memory in MiB).

    Args:
        preset: preset name.
        translator: translator kind.
        device: device name.
        threads: torch intra-op threads.
        mode: ``parallel`` (two direction threads), ``sequential``, or ``compiled``.
        batch: images per site per iteration.
        crop: crop side in pixels.
        gflop: FLOPs of one fp32 iteration, forward and backward, in GFLOP.
        seconds: timed fp32 iterations (of every round).
        best_s: fastest fp32 iteration.
        median_s: median fp32 iteration.
        gflops: ``gflop / best_s``.
        peak_gflops: best fp32 ``torch.mm`` rate.
        fraction: ``gflops / peak_gflops``.
        peak_rss_mib: peak resident memory of the process (before the matmul probe).
        cuda_peak_mib: ``torch.cuda.max_memory_allocated`` (CUDA only).
        bf16_best_s: fastest iteration under bf16 autocast (CUDA only).
        ref: the eager reference's measurement in the same process (None: not timed).
    """

    preset: str
    translator: str
    device: str
    threads: int
    mode: str
    batch: int
    crop: int
    gflop: float
    seconds: list[float]
    best_s: float
    median_s: float
    gflops: float
    peak_gflops: float
    fraction: float
    peak_rss_mib: float
    cuda_peak_mib: float | None
    bf16_best_s: float | None
    ref: ReferenceResult | None = None


def mode_of(job: Job) -> str:
    """The job's mode as :attr:`Result.mode` records it.

    Args:
        job: the measurement.

    Returns:
        ``compiled``, ``parallel`` (two direction threads) or ``sequential``.
    """
    if job.compile:
        return "compiled"
    # The step runner only goes parallel on CPU with at least 2 threads.
    parallel = job.parallel and job.device == "cpu" and job.threads >= 2
    return "parallel" if parallel else "sequential"


def with_reference(result: Result, gflop: float, seconds: list[float]) -> Result:
    """``result`` with the eager reference's figures, from its alternating iterations.

    Args:
        result: our measurement (its ``seconds`` aligned with ``seconds``).
        gflop: FLOPs of one reference iteration in GFLOP.
        seconds: the reference's iterations, ``seconds[i]`` timed right after ours.

    Returns:
        A copy with :attr:`Result.ref` set, against the result's own peak.

    Raises:
        InputError: the two lists differ in length or are empty.
    """
    if len(seconds) != len(result.seconds) or not seconds:
        raise InputError(
            f"eager reference: {len(seconds)} timed iterations against our "
            f"{len(result.seconds)}; they alternate, so give one per iteration of ours (>= 1)."
        )
    best = min(seconds)
    pairs = [theirs / ours for ours, theirs in zip(result.seconds, seconds, strict=True)]
    ref = ReferenceResult(
        gflop=gflop,
        seconds=list(seconds),
        best_s=best,
        median_s=statistics.median(seconds),
        gflops=gflop / best,
        fraction=gflop / best / result.peak_gflops,
        speedup=best / result.best_s,
        paired_speedup=statistics.median(pairs),
    )
    return replace(result, ref=ref)


def with_peak(result: Result, peak: float) -> Result:
    """``result`` measured against another matmul peak (ours and the reference's fraction).

    Args:
        result: a measurement.
        peak: the peak in GFLOP/s.
    """
    ref = result.ref
    if ref is not None:
        ref = replace(ref, fraction=ref.gflops / peak)
    return replace(result, peak_gflops=peak, fraction=result.gflops / peak, ref=ref)


def best_of(results: list[Result]) -> Result:
    """Merge repeated measurements of one job: the fastest iteration and the best peak.

    Args:
        results: results of the same job from several rounds.
    """
    best = min(results, key=lambda r: r.best_s)
    seconds = [s for r in results for s in r.seconds]
    merged = replace(
        best,
        seconds=seconds,
        median_s=statistics.median(seconds),
        best_s=min(seconds),
        peak_rss_mib=max(r.peak_rss_mib for r in results),
        ref=None,
    )
    merged = with_peak(merged, max(r.peak_gflops for r in results))
    refs = [r.ref for r in results]
    if any(ref is None for ref in refs):
        return merged
    ref_seconds = [s for ref in refs if ref is not None for s in ref.seconds]
    return with_reference(merged, best.ref.gflop if best.ref else 0.0, ref_seconds)


def describe(result: Result) -> list[str]:
    """Human-readable lines for one result: ours, the eager reference, the targets for ixi.

    Args:
        result: what a job measured.
    """
    r = result
    lines = [
        f"{r.preset}/{r.translator} on {r.device} ({r.threads} threads, {r.mode}), "
        f"batch {r.batch} x {r.crop}x{r.crop}:",
        f"  iteration     {r.best_s:.3f} s best, {r.median_s:.3f} s median of "
        f"{len(r.seconds)} ({1.0 / r.best_s:.2f} it/s)",
        f"  work          {r.gflop:.1f} GFLOP per iteration (forward + backward)",
        f"  achieved      {r.gflops:.1f} GFLOP/s = {100 * r.fraction:.1f}% of the fp32 matmul "
        f"peak {r.peak_gflops:.1f} GFLOP/s",
        f"  peak memory   {r.peak_rss_mib:.0f} MiB resident",
    ]
    if r.cuda_peak_mib is not None:
        lines.append(f"  cuda memory   {r.cuda_peak_mib:.0f} MiB max allocated")
    if r.bf16_best_s is not None:
        lines.append(
            f"  autocast      fp32 {1.0 / r.best_s:.2f} it/s, bf16 {1.0 / r.bf16_best_s:.2f} it/s "
            f"({r.best_s / r.bf16_best_s:.2f}x)"
        )
    ref = r.ref
    if ref is not None:
        lines += [
            f"  eager reference {ref.best_s:.3f} s best, {ref.median_s:.3f} s median of "
            f"{len(ref.seconds)}; {ref.gflop:.1f} GFLOP per iteration, {ref.gflops:.1f} GFLOP/s "
            f"= {100 * ref.fraction:.1f}% of the peak",
            f"  vs eager reference {ref.speedup:.2f}x faster per iteration (best against best), "
            f"{ref.paired_speedup:.2f}x (median of {len(ref.seconds)} alternating pairs)",
        ]
    if r.preset == "ixi" and r.device == "cpu":
        lines.append(
            f"  target        {100 * TARGET_FRACTION:.0f}% of the peak: "
            + ("met" if r.fraction >= TARGET_FRACTION else "MISSED")
        )
        if ref is not None:
            lines.append(
                f"  target        {TARGET_SPEEDUP}x the eager reference: "
                + ("met" if ref.speedup >= TARGET_SPEEDUP else "MISSED")
            )
    return lines


def jobs_of(args: argparse.Namespace, device: str) -> list[Job]:
    """The jobs of a command line: every (preset, translator) pair, presets outermost.

    Args:
        args: the parsed command line of ``train_speed.py``.
        device: ``cpu`` or ``cuda`` (``--device auto`` already resolved).

    Returns:
        One job per pair, in the order they run in each round.
    """
    jobs = []
    for preset in args.presets:
        for translator in args.translators:
            job = Job(
                preset=preset,
                translator=translator,
                iterations=args.iterations,
                warmup=args.warmup,
                threads=args.threads,
                device=device,
                compile=args.compile,
                # As the trainer: compiled networks are not run from two threads.
                parallel=not args.sequential and not args.compile,
                reference=args.reference,
            )
            jobs.append(job)
    return jobs


def write_json(path: Path, results: list[Result], args: argparse.Namespace) -> None:
    """Write the results atomically (:func:`segrenorm.atomic.write_json_atomic`).

    Args:
        path: output file.
        results: the measurements.
        args: the command line, recorded alongside.
    """
    payload = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "options": {k: v for k, v in vars(args).items() if k != "json"},
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "reference": "eager reference (benchmarks/eager_reference.py), alternating with ours",
        "targets": {"fraction": TARGET_FRACTION, "speedup_vs_eager_reference": TARGET_SPEEDUP},
        "results": [asdict(r) for r in results],
    }
    write_json_atomic(path, payload)
