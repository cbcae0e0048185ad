"""GPU speed: training iterations/s and harmonize volumes/min next to measured matmul peaks.

Without a visible CUDA device this prints one line saying what it would measure, writes
``{"device": null, "skipped": ...}`` with ``--json`` and exits 0. With CUDA, one run measures
the device's fp32 (TF32 off), TF32, bf16 and fp16 ``torch.mm`` peaks, then per configuration
(with its ``torch.cuda.max_memory_allocated``):

* training iterations/s per preset for fp32 / bf16 autocast / fp16 autocast with a GradScaler
  x channels-last x ``torch.compile`` (per network, as ``run.compile``), through
  :class:`segrenorm.training.step.StepRunner` in the trainer's order, on the batch of
  ``benchmarks/train_speed.py``;
* harmonize volumes/min at one preset's width on the 1 mm MNI152 grid (nilearn's template or a
  synthetic head of its size) through :class:`segrenorm.models.inference.ConditionedGenerator`
  in fixed-size batches, fp32/bf16 x eager / ``torch.compile`` / a captured CUDA graph /
  ``torch.compile(mode="reduce-overhead")``, host-device copies included, file I/O not.

An error in one configuration (compile unsupported, out of memory) is reported in its row.
Several GPUs: the ``torchrun`` command measuring data-parallel training is printed.

Usage:
    python benchmarks/gpu_speed.py --quick --json gpu.json   # smoke run, under 4 minutes
    python benchmarks/gpu_speed.py [--presets ixi msseg] [--precisions fp32 bf16 fp16]
        [--channels-last both] [--compile both] [--infer-modes eager compile graph
        reduce-overhead] [--iterations 10] [--warmup 3] [--budget-s S] [--json OUT]
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gpu_plan import (
    NO_GPU,
    InferVariant,
    Row,
    TrainVariant,
    build_parser,
    compiles,
    count_gflop,
    format_table,
    fractions,
    head_volume,
    matmul_rate,
    multi_gpu_hint,
    resolve,
    skipped_payload,
    slice_stack,
    timed,
    volumes_per_minute,
)
from segrenorm.errors import ConfigError, SegrenormError

DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def matmul_peaks(device: torch.device, size: int = 8192, reps: int = 6) -> dict[str, float]:
    """Best ``torch.mm`` GFLOP/s in fp32 (TF32 off), TF32, bf16 and fp16 on ``device``."""
    peaks: dict[str, float] = {}
    saved = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (
            ("fp32", torch.float32, False),
            ("tf32", torch.float32, True),
            ("bf16", torch.bfloat16, False),
            ("fp16", torch.float16, False),
        ):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            peaks[name] = matmul_rate(size, _mm_seconds(size, dtype, reps, device))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return peaks


def _mm_seconds(size: int, dtype: torch.dtype, reps: int, device: torch.device) -> list[float]:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    out = torch.mm(a, b)  # warm-up: library initialisation, clocks
    return timed(lambda: torch.mm(a, b, out=out), reps, device)


def train_iteration(
    model: Any, optimizers: Mapping[str, torch.optim.Optimizer], batch: dict[str, Tensor], *,
    amp: torch.dtype | None, scaler: torch.amp.GradScaler,
) -> Callable[[], list[float]]:  # fmt: skip
    """One trainer iteration as a closure returning its loss values (one host sync per step).

    As ``segrenorm.training.trainer``: zero the gradients, generator step through a
    sequential :class:`~segrenorm.training.step.StepRunner`, backward through the scaler,
    seg and gen optimiser steps, then the discriminator step, then ``scaler.update()``. A
    disabled scaler (fp32, bf16) is a pass-through.

    Args:
        model: the translator, in training mode.
        optimizers: from :func:`segrenorm.training.optim.build_optimizers`.
        batch: the batch trained on every iteration.
        amp: autocast dtype, or None for fp32.
        scaler: the gradient scaler (enabled for fp16 only).

    Returns:
        The closure; it returns the generator total and terms, then the discriminator's.
    """
    from segrenorm.training.step import StepRunner

    runner = StepRunner(model, device=batch["a"].device, amp=amp, parallel=False)

    def read(losses: Any) -> list[float]:
        values = [losses.total.detach(), *losses.terms.values()]
        return [float(v) for v in torch.stack([v.float() for v in values]).tolist()]

    def step() -> list[float]:
        for opt in optimizers.values():
            opt.zero_grad(set_to_none=True)
        gen = runner.generator(batch)
        values = read(gen)
        runner.backward(gen, scaler.scale)
        for name in ("seg", "gen"):
            if name in optimizers:
                scaler.step(optimizers[name])
        optimizers["disc"].zero_grad(set_to_none=True)
        disc = runner.discriminator(batch, gen.outputs)
        values += read(disc)
        runner.backward(disc, scaler.scale)
        scaler.step(optimizers["disc"])
        scaler.update()
        return values

    return step


def build_training(
    preset: str, variant: TrainVariant, device: torch.device, overrides: Sequence[str] = ()
) -> Callable[[], list[float]]:
    """A fresh seeded translator, optimisers and batch of ``preset`` as :func:`train_iteration`.

    Args:
        preset: preset name (or config file).
        variant: precision, channels-last and compile.
        device: the training device.
        overrides: ``section.field=value`` strings applied to the preset.

    Raises:
        ConfigError: an unknown preset or override, or fp16 off CUDA.
    """
    import train_speed  # a sibling script: its batch is the training benchmark's
    from segrenorm.config.load import load_config
    from segrenorm.models.translator import Translator
    from segrenorm.training.optim import build_optimizers

    if variant.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"precision fp16 needs a CUDA device, not {device}: use fp32 or bf16.")
    config = load_config(preset, overrides=list(overrides))
    torch.manual_seed(config.run.seed)
    model = Translator.from_config(config).to(device)
    batch = train_speed.make_batch(config, device)
    if variant.channels_last:  # parameters and images NHWC; label maps stay 3-D
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        batch = {k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
                 for k, v in batch.items()}  # fmt: skip
    model.train()
    if variant.compile:
        for net in model.children():
            net.compile()  # as run.compile: in place, per network
    amp = DTYPES[variant.precision]
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    return train_iteration(model, build_optimizers(model, config.optim), batch, amp=amp,
                           scaler=scaler)  # fmt: skip


def _reset(device: torch.device, compiled: bool) -> None:
    """Free what the last configuration left (caches, compiled graphs) before the next one."""
    gc.collect()
    if compiled:
        torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


def measure_train(
    preset: str, variant: TrainVariant, device: torch.device, ctx: dict[str, Any]
) -> Row:
    """Time one training configuration; any error ends up in the row.

    Args:
        preset: preset name.
        variant: the configuration.
        device: the CUDA device.
        ctx: ``peaks``, ``tf32``, ``iterations``, ``warmup``, ``overrides`` and ``flops`` (a
            per-preset cache filled by eager configurations).
    """
    base = Row("train", preset, variant.label, variant.precision)
    _reset(device, False)
    try:
        step = build_training(preset, variant, device, ctx["overrides"])
        timed(step, 1, device)  # builds the optimiser state (and compiles)
        if not variant.compile and preset not in ctx["flops"]:
            ctx["flops"][preset] = count_gflop(step)
        timed(step, max(ctx["warmup"] - 1, 0), device)
        seconds = timed(step, ctx["iterations"], device)
    except Exception as exc:  # a failing configuration must not end the run
        return _done(base, device, variant, error=_error(exc))
    best = min(seconds)
    gflop = ctx["flops"].get(preset)
    frac = fractions(gflop, best, ctx["peaks"], variant.precision, ctx["tf32"]) if gflop else None
    note = f"median {statistics.median(seconds):.4f} s of {len(seconds)}"
    return _done(base, device, variant, rate=1.0 / best, best_s=best, gflop=gflop, frac=frac,
                 note=note)  # fmt: skip


def _done(
    base: Row, device: torch.device, variant: TrainVariant | InferVariant, *,
    frac: tuple[float, float] | None = None, **fields: Any,
) -> Row:  # fmt: skip
    """``base`` with the figures and the device's peak memory; then clean up."""
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    if frac is not None:
        fields.update(fraction=frac[0], own_fraction=frac[1])
    row = Row(**{**asdict(base), **fields, "cuda_peak_mib": peak})
    _reset(device, compiles(variant))
    return row


def build_inference(
    preset: str, variant: InferVariant, device: torch.device, batch_shape: tuple[int, ...],
    overrides: Sequence[str] = (),
) -> Callable[[Tensor], Tensor]:  # fmt: skip
    """The inference graph of an untrained ``preset`` translator, ``x -> float32 output``.

    Modes: ``eager``; ``compile``: ``torch.compile(dynamic=False)`` as ``harmonize --compile``;
    ``graph``: one CUDA graph captured for ``batch_shape`` after a warm-up on a side stream
    (inputs are copied into its static buffer; every call returns the same output buffer);
    ``reduce-overhead``: torch.compile's own CUDA graphs.

    Args:
        preset: preset name (sets the width).
        variant: precision and mode.
        device: where it runs.
        batch_shape: the fixed (B, k, H, W) input shape (used by ``graph``).
        overrides: ``section.field=value`` strings applied to the preset.

    Raises:
        ConfigError: a CUDA-graph mode off CUDA, or a bad preset or override.
    """
    from segrenorm.config.load import load_config
    from segrenorm.harmonize.harmonizer import HarmonizeOptions
    from segrenorm.models.inference import ConditionedGenerator
    from segrenorm.models.translator import Translator

    if variant.mode in ("graph", "reduce-overhead") and device.type != "cuda":
        raise ConfigError(f"mode {variant.mode!r} needs CUDA, not {device}: use eager or compile.")
    config = load_config(preset, overrides=list(overrides))
    torch.manual_seed(config.run.seed)
    translator = Translator.from_config(config).to(device).eval()
    # The seg net's chunking as harmonize runs it (HarmonizeOptions.seg_batch).
    module = ConditionedGenerator(translator, "AB", seg_chunk=HarmonizeOptions().seg_batch)
    net: Callable[[Tensor], Tensor] = module.eval()
    if variant.mode != "eager" and variant.mode != "graph":
        mode = "reduce-overhead" if variant.mode == "reduce-overhead" else None
        net = torch.compile(module, mode=mode, dynamic=False)
    dtype = DTYPES[variant.precision]

    def forward(x: Tensor) -> Tensor:
        # No autocast weight cache: a captured graph must not read tensors freed after capture.
        cast = torch.autocast(device.type, dtype=dtype, cache_enabled=False)
        with torch.no_grad(), cast if dtype is not None else contextlib.nullcontext():
            if variant.mode == "reduce-overhead":
                torch.compiler.cudagraph_mark_step_begin()  # the previous output is copied
            return net(x).float()

    if variant.mode != "graph":
        return forward
    static_in = torch.full(batch_shape, -1.0, device=device)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):  # cuDNN picks kernels and allocates workspaces before the capture
            forward(static_in)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = forward(static_in)

    def replay(x: Tensor) -> Tensor:
        static_in.copy_(x)
        graph.replay()
        return static_out

    return replay


def translate_slices(
    run: Callable[[Tensor], Tensor], stack: Tensor, batch: int, device: torch.device
) -> Tensor:
    """Translate a host (N, k, H, W) stack ``batch`` slices at a time into a host output.

    Each batch is copied to the device (asynchronously from pinned memory on CUDA),
    translated and copied back into one preallocated (N, 1, H, W) output, as harmonize does.

    Args:
        run: from :func:`build_inference`.
        stack: the inputs, N a multiple of ``batch`` (see :func:`slice_stack`).
        batch: slices per call.
        device: where ``run`` computes.

    Returns:
        The translated centre slices, on the host.
    """
    out = torch.empty(stack.shape[0], 1, *stack.shape[2:], pin_memory=device.type == "cuda")
    for start in range(0, stack.shape[0], batch):
        x = stack[start : start + batch].to(device, non_blocking=True)
        out[start : start + batch].copy_(run(x), non_blocking=True)  # stream-ordered reuse
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out


def measure_harmonize(
    preset: str, variant: InferVariant, device: torch.device, ctx: dict[str, Any]
) -> Row:
    """Time whole-volume translation in one configuration; any error ends up in the row.

    Args:
        preset: preset name (the width).
        variant: the configuration.
        device: the CUDA device.
        ctx: ``peaks``, ``tf32``, ``stack`` (the volume's padded inputs, pinned), ``timed``
            (slices timed per repeat), ``batch``, ``repeats``, ``overrides``, ``source`` and
            ``flops`` (a cache filled by eager configurations).
    """
    base = Row("harmonize", preset, variant.label, variant.precision)
    batch, stack = ctx["batch"], ctx["stack"]
    part = stack[: ctx["timed"]]
    key = f"harmonize:{preset}"
    _reset(device, False)
    try:
        run = build_inference(preset, variant, device, (batch, *stack.shape[1:]), ctx["overrides"])
        for _ in range(3):  # warm-up: compilation; reduce-overhead records on later calls
            translate_slices(run, part[:batch], batch, device)
        if variant.mode == "eager" and key not in ctx["flops"]:
            first = part[:batch].to(device)
            ctx["flops"][key] = count_gflop(lambda: run(first)) / batch  # per slice
        seconds = timed(lambda: translate_slices(run, part, batch, device), ctx["repeats"], device)
    except Exception as exc:  # a failing configuration must not end the run
        return _done(base, device, variant, error=_error(exc))
    n_total, n_timed = stack.shape[0], part.shape[0]
    per_volume = min(seconds) * n_total / n_timed
    per_slice = ctx["flops"].get(key)
    gflop = per_slice * n_total if per_slice else None
    frac = (
        fractions(gflop, per_volume, ctx["peaks"], variant.precision, ctx["tf32"])
        if gflop
        else None
    )
    note = f"{n_total} slices {'x'.join(map(str, stack.shape[2:]))}, batch {batch}"
    if n_timed < n_total:
        note += f", from {n_timed} slices"
    rate = volumes_per_minute(min(seconds), n_timed, n_total)
    return _done(base, device, variant, rate=rate, best_s=per_volume, gflop=gflop, frac=frac,
                 note=note)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Measure every job on the GPU and print a table; without a GPU say so.

    Args:
        argv: command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        0, with or without a GPU and whatever the rows' errors.
    """
    from segrenorm.atomic import write_json_atomic

    parser = build_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    try:
        jobs = resolve(args)
    except SegrenormError as exc:
        parser.error(str(exc))
    if not torch.cuda.is_available():
        print(NO_GPU, flush=True)
        if args.json is not None:
            write_json_atomic(args.json, skipped_payload())
        return 0
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    tf32 = bool(torch.backends.cudnn.allow_tf32)  # fp32 convolutions then run in TF32
    peaks = matmul_peaks(device)
    name = torch.cuda.get_device_name(device)
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN TF32 {tf32}")
    print("matmul peaks GFLOP/s: " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
    if torch.cuda.device_count() > 1:
        print(multi_gpu_hint(torch.cuda.device_count(), args.presets[0]))
    ctx: dict[str, Any] = {"peaks": peaks, "tf32": tf32, "flops": {}, **vars(args)}
    if any(kind == "harmonize" for kind, _, _ in jobs):
        from segrenorm.config.load import load_config

        config = load_config(args.harmonize_preset, overrides=args.overrides)
        volume, ctx["source"] = head_volume()
        stack, _ = slice_stack(
            volume, config.model.stride, config.data.context_slices, args.batch_size
        )
        ctx["stack"] = stack.pin_memory()
        ctx["timed"] = 2 * args.batch_size if args.quick else stack.shape[0]
        ctx["batch"] = args.batch_size
        print(f"harmonize volume: {ctx['source']}")
    print(format_table([]), flush=True)
    rows, started = [], time.perf_counter()
    for kind, preset, variant in jobs:
        if args.budget_s is not None and time.perf_counter() - started > args.budget_s:
            spent = f"skipped: --budget-s {args.budget_s:g} spent"
            row = Row(kind, preset, variant.label, variant.precision, error=spent)
        elif isinstance(variant, TrainVariant):
            row = measure_train(preset, variant, device, ctx)
        else:
            row = measure_harmonize(preset, variant, device, ctx)
        rows.append(row)
        print(format_table([row]).splitlines()[1], flush=True)
    if args.json is not None:
        options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        payload = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
                   "tf32_convolutions": tf32, "peaks_gflops": peaks, "options": options,
                   "rows": [asdict(r) for r in rows]}  # fmt: skip
        write_json_atomic(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
