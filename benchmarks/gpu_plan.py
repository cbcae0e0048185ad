"""What ``gpu_speed.py`` measures and how it reports it; nothing here needs a device.

The command line and the configuration grid, the volume harmonize is timed on, matmul peaks
and fractions of them from timings, volumes per minute, the text table, and what is printed
or written where no GPU is visible: all of it is tested on CPU.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from segrenorm.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")
INFER_PRECISIONS = ("fp32", "bf16")
INFER_MODES = ("eager", "compile", "graph", "reduce-overhead")
SWITCHES = {"off": (False,), "on": (True,), "both": (False, True)}
MNI_SHAPE = (197, 233, 189)  # nilearn's MNI152 2009 T1 at 1 mm; axial slices are 197 x 233
QUICK_BUDGET_S = 150.0  # of jobs; the last one started may overrun by its compile time
NO_GPU = (
    "no CUDA GPU is visible: nothing measured. With one, this prints training iterations/s "
    "(fp32, bf16, fp16 x channels-last x torch.compile) and harmonize volumes/min (eager, "
    "torch.compile, CUDA graphs) next to the device's fp32 and bf16 matmul peaks."
)


@dataclass(frozen=True)
class TrainVariant:
    """One training configuration: autocast precision, memory format, compilation."""

    precision: str
    channels_last: bool
    compile: bool

    @property
    def label(self) -> str:
        """E.g. ``bf16+channels-last+compile``."""
        flags = ["channels-last"] * self.channels_last + ["compile"] * self.compile
        return "+".join([self.precision, *flags])


@dataclass(frozen=True)
class InferVariant:
    """One inference configuration: autocast precision and execution mode."""

    precision: str
    mode: str

    @property
    def label(self) -> str:
        """E.g. ``bf16+graph``."""
        return f"{self.precision}+{self.mode}"


@dataclass(frozen=True)
class Row:
    """What one configuration measured (None where it failed or was skipped).

    Args:
        kind: ``train`` or ``harmonize``.
        preset: the preset whose networks ran.
        label: the variant's label.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        rate: iterations/s (train) or volumes/min (harmonize).
        best_s: fastest iteration, or seconds per volume.
        gflop: FLOPs of one iteration (forward + backward) or one volume, in GFLOP.
        fraction: achieved GFLOP/s over the fp32 (TF32 off) matmul peak.
        own_fraction: achieved GFLOP/s over the peak of the precision the math ran in.
        cuda_peak_mib: ``torch.cuda.max_memory_allocated`` during the configuration.
        note: how the rate was obtained (e.g. extrapolated from fewer slices).
        error: the exception that stopped this configuration, or why it was skipped.
    """

    kind: str
    preset: str
    label: str
    precision: str
    rate: float | None = None
    best_s: float | None = None
    gflop: float | None = None
    fraction: float | None = None
    own_fraction: float | None = None
    cuda_peak_mib: float | None = None
    note: str = ""
    error: str | None = None


def check_names(names: Sequence[str], allowed: Sequence[str], option: str) -> tuple[str, ...]:
    """``names`` as a tuple when every one is allowed.

    Args:
        names: the values given.
        allowed: the known values.
        option: the option's name, for the message.

    Returns:
        The names as a tuple, duplicates removed, order kept.

    Raises:
        ConfigError: an unknown name, or none at all.
    """
    for name in names:
        if name not in allowed:
            raise ConfigError(f"{option} {name!r} is unknown: use any of {', '.join(allowed)}.")
    if not names:
        raise ConfigError(f"{option} needs at least one of {', '.join(allowed)}.")
    return tuple(dict.fromkeys(names))


def train_grid(precisions: Sequence[str], channels_last: str, compile: str) -> list[TrainVariant]:
    """Every (precision, channels-last, compile) combination, precision varying slowest.

    Args:
        precisions: names in :data:`PRECISIONS`.
        channels_last: ``off``, ``on`` or ``both``.
        compile: ``off``, ``on`` or ``both``.

    Returns:
        The variants.

    Raises:
        ConfigError: an unknown precision or switch value.
    """
    chosen = check_names(precisions, PRECISIONS, "precision")
    for option, value in (("--channels-last", channels_last), ("--compile", compile)):
        check_names([value], tuple(SWITCHES), option)
    return [
        TrainVariant(p, cl, comp)
        for p in chosen
        for cl in SWITCHES[channels_last]
        for comp in SWITCHES[compile]
    ]


def infer_grid(precisions: Sequence[str], modes: Sequence[str]) -> list[InferVariant]:
    """Every (precision, mode) combination of the inference path, precision varying slowest.

    Args:
        precisions: names in :data:`INFER_PRECISIONS`.
        modes: names in :data:`INFER_MODES`.

    Returns:
        The variants.

    Raises:
        ConfigError: an unknown precision (fp16 inference is not measured) or mode.
    """
    chosen = check_names(precisions, INFER_PRECISIONS, "inference precision")
    return [InferVariant(p, m) for p in chosen for m in check_names(modes, INFER_MODES, "mode")]


def quick_plan() -> tuple[list[TrainVariant], list[InferVariant]]:
    """The smoke run's variants: each feature once, mostly in bf16 (the GPU default)."""
    train = [TrainVariant("fp32", False, False), TrainVariant("bf16", False, False)]
    train += [TrainVariant("fp16", False, False), TrainVariant("bf16", True, False)]
    train.append(TrainVariant("bf16", False, True))
    infer = [InferVariant("fp32", "eager"), InferVariant("fp32", "graph")]
    infer += [InferVariant("bf16", m) for m in INFER_MODES]
    return train, infer


def compiles(variant: TrainVariant | InferVariant) -> bool:
    """Whether a variant calls ``torch.compile`` (those run last: they take longest)."""
    if isinstance(variant, TrainVariant):
        return variant.compile
    return variant.mode in ("compile", "reduce-overhead")


def matmul_rate(size: int, seconds: Sequence[float]) -> float:
    """GFLOP/s of the fastest of several ``size`` x ``size`` matrix products.

    Raises:
        ConfigError: no timings, or one that is not positive.
    """
    if not seconds or min(seconds) <= 0:
        raise ConfigError(f"matmul timings {list(seconds)} must be a non-empty list of s > 0.")
    return 2.0 * size**3 / min(seconds) / 1e9


def own_peak(precision: str, tf32: bool) -> str:
    """The peak an fp32/bf16/fp16 workload is compared with: fp32 math runs in TF32 when on."""
    return "tf32" if precision == "fp32" and tf32 else precision


def fractions(
    gflop: float, seconds: float, peaks: dict[str, float], precision: str, tf32: bool
) -> tuple[float, float]:
    """Achieved GFLOP/s over the fp32 peak and over the precision's own peak."""
    achieved = gflop / seconds
    return achieved / peaks["fp32"], achieved / peaks[own_peak(precision, tf32)]


def volumes_per_minute(seconds: float, slices_timed: int, slices_per_volume: int) -> float:
    """Volumes per minute when ``slices_timed`` slices took ``seconds``."""
    return 60.0 * slices_timed / (seconds * slices_per_volume)


def _cell(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: Sequence[Row]) -> str:
    """The rows as an aligned text table; an error replaces a row's figures."""
    head = f"{'kind':<10} {'preset':<7} {'configuration':<26} {'rate':>14} {'best s':>8} "
    head += f"{'GFLOP':>8} {'fp32 pk':>7} {'own pk':>6} {'MiB':>7}  note"
    lines = [head]
    for r in rows:
        unit = "it/s" if r.kind == "train" else "vol/min"
        rate = "-" if r.rate is None else f"{r.rate:.2f} {unit}"
        line = f"{r.kind:<10} {r.preset:<7} {r.label:<26} {rate:>14} {_cell(r.best_s, '.4f'):>8} "
        line += f"{_cell(r.gflop, '.1f'):>8} {_cell(r.fraction, '.1%'):>7} "
        line += f"{_cell(r.own_fraction, '.1%'):>6} {_cell(r.cuda_peak_mib, '.0f'):>7}"
        note = r.note if r.error is None else r.error
        note = note if r.error is None or note.startswith("skipped") else f"ERROR {note}"
        lines.append(f"{line}  {note}".rstrip())
    return "\n".join(lines)


def multi_gpu_hint(count: int, preset: str = "ixi") -> str:
    """How to measure data-parallel training on ``count`` GPUs (not done in-process)."""
    return (
        f"{count} GPUs visible: measure data-parallel training with `torchrun --standalone "
        f"--nproc_per_node {count} -m segrenorm train --config {preset} --data CACHE --out RUNS "
        "--set run.amp=bf16 --iterations 300 --no-progress` and read it_per_s in "
        "RUNS/<run>/log.jsonl (one rank's steps; each step sees every rank's batch)."
    )


def skipped_payload() -> dict[str, Any]:
    """The JSON written where no GPU is visible."""
    return {"device": None, "skipped": NO_GPU}


Job = tuple[str, str, TrainVariant | InferVariant]  # (kind, preset, variant)


def plan_jobs(
    presets: Sequence[str],
    harmonize_preset: str | None,
    train: Sequence[TrainVariant],
    infer: Sequence[InferVariant],
) -> list[Job]:
    """Training jobs per preset, then harmonize jobs; every compiling job after all others.

    Compilation is what may not fit a time budget, so the eager figures come first.

    Args:
        presets: presets whose training is timed.
        harmonize_preset: the preset whose inference graph is timed (None: no harmonize).
        train: training variants.
        infer: inference variants.

    Returns:
        The jobs in the order to run them.
    """
    jobs: list[Job] = [("train", p, v) for p in presets for v in train]
    if harmonize_preset is not None:
        jobs += [("harmonize", harmonize_preset, v) for v in infer]
    return sorted(jobs, key=lambda job: compiles(job[2]))  # stable: the order is kept otherwise


def build_parser(description: str) -> argparse.ArgumentParser:
    """The command line of ``gpu_speed.py`` (``None`` defaults are filled by :func:`resolve`).

    Args:
        description: the parser's description.

    Returns:
        The parser.
    """
    parser = argparse.ArgumentParser(description=description)
    add = parser.add_argument
    add(
        "--quick",
        action="store_true",
        help="smoke run: each feature once (grid options ignored), few iterations, ixi",
    )
    add("--presets", nargs="+", default=None, help="training presets (ixi msseg; quick: ixi)")
    add("--precisions", nargs="+", default=["fp32", "bf16", "fp16"], help="training precisions")
    add("--channels-last", choices=("off", "on", "both"), default="both", help="training")
    add("--compile", choices=("off", "on", "both"), default="both", help="training")
    add("--infer-precisions", nargs="+", default=["fp32", "bf16"], help="harmonize precisions")
    add("--infer-modes", nargs="+", default=["eager", "compile", "graph", "reduce-overhead"])
    add("--harmonize-preset", default="ixi", help="preset whose width harmonize runs at")
    add("--parts", nargs="+", choices=("train", "harmonize"), default=["train", "harmonize"])
    add("--batch-size", type=int, default=16, help="harmonize slices per call (16)")
    add("--iterations", type=int, default=None, help="timed training iterations (10; quick 3)")
    add("--warmup", type=int, default=None, help="untimed iterations first (3; quick 2)")
    add("--repeats", type=int, default=None, help="timed volumes, best counts (3; quick 1)")
    add("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    add(
        "--budget-s",
        type=float,
        default=None,
        help=f"skip jobs after this (quick: {QUICK_BUDGET_S:g})",
    )
    add("--cudnn-benchmark", action="store_true", help="let cuDNN time its kernels per shape")
    add("--json", type=Path, default=None, metavar="OUT", help="write the results here")
    return parser


def resolve(args: argparse.Namespace) -> list[Job]:
    """Fill the quick/full defaults into ``args`` and return the jobs (see :func:`plan_jobs`).

    Args:
        args: from :func:`build_parser`; changed in place.

    Returns:
        The jobs in the order to run them.

    Raises:
        ConfigError: an unknown preset, override, precision or mode, or a count below 1.
    """
    from segrenorm.config.load import load_config

    quick = args.quick
    args.presets = args.presets or (["ixi"] if quick else ["ixi", "msseg"])
    for name, full, short in (("iterations", 10, 3), ("warmup", 3, 2), ("repeats", 3, 1)):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    if args.budget_s is None and quick:
        args.budget_s = QUICK_BUDGET_S
    for name in ("iterations", "warmup", "repeats", "batch_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}={getattr(args, name)} must be >= 1.")
    for preset in {*args.presets, args.harmonize_preset}:
        load_config(preset, overrides=args.overrides)  # fail before any GPU work
    if quick:
        train, infer = quick_plan()
    else:
        train = train_grid(args.precisions, args.channels_last, args.compile)
        infer = infer_grid(args.infer_precisions, args.infer_modes)
    presets = args.presets if "train" in args.parts else []
    harmonize = args.harmonize_preset if "harmonize" in args.parts else None
    return plan_jobs(presets, harmonize, train, infer)


def head_volume() -> tuple[np.ndarray, str]:
    """nilearn's 1 mm MNI152 T1 in [-1, 1] (background -1), or a synthetic head of its size."""
    try:
        from nilearn import datasets

        data = np.asarray(datasets.load_mni152_template(resolution=1).dataobj, dtype=np.float32)
        source = "MNI152 2009 T1 (nilearn), 1 mm"
    except Exception:  # nilearn or its bundled template missing: a head-shaped stand-in
        axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in MNI_SHAPE]
        xx, yy, zz = np.meshgrid(*axes, indexing="ij")
        r = np.sqrt((xx / 0.8) ** 2 + (yy / 0.9) ** 2 + (zz / 0.85) ** 2)
        data = np.where(r < 1.0, 0.3 + 0.7 * np.cos(6.0 * r) ** 2, 0.0).astype(np.float32)
        source = f"synthetic head {'x'.join(map(str, MNI_SHAPE))}"
    scaled = data / max(float(data.max()), 1e-6) * 2.0 - 1.0
    return np.where(data > 0, scaled, -1.0).astype(np.float32), source


def slice_stack(volume: np.ndarray, stride: int, context: int, batch: int) -> tuple[Tensor, int]:
    """Axial slices with foreground as (N, k, H, W) inputs, padded as harmonize pads them.

    Sides are padded with -1 to multiples of ``stride``; each slice carries its k = ``context``
    neighbours (clamped at the ends); N is rounded up to a multiple of ``batch`` with
    background slices (a fixed batch shape, as harmonize uses for compiled models).

    Args:
        volume: (X, Y, Z) canonical volume in [-1, 1], background -1; axial slices are (X, Y).
        stride: the translator's stride.
        context: slices per input stack (odd).
        batch: slices per forward pass.

    Returns:
        The stack and the number of real slices (the volume's slices with foreground).
    """
    keep = np.flatnonzero((volume > -1.0).any(axis=(0, 1)))
    height, width = (-(-n // stride) * stride for n in volume.shape[:2])
    padded = np.full((height, width, volume.shape[2]), -1.0, dtype=np.float32)
    padded[: volume.shape[0], : volume.shape[1]] = volume
    half = context // 2
    picks = np.clip(keep[:, None] + np.arange(-half, half + 1)[None], 0, volume.shape[2] - 1)
    stack = np.moveaxis(padded[:, :, picks], (2, 3), (0, 1))  # (N, k, H, W)
    n_total = -(-len(keep) // batch) * batch
    out = np.full((n_total, context, height, width), -1.0, dtype=np.float32)
    out[: len(keep)] = stack
    return torch.from_numpy(out), len(keep)


def timed(fn: Callable[[], object], n: int, device: torch.device) -> list[float]:
    """Seconds of ``n`` calls of ``fn``, synchronised on CUDA before and after each."""
    seconds = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def count_gflop(fn: Callable[[], object]) -> float:
    """GFLOP of one call of ``fn`` (forward and backward), by ``FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9
