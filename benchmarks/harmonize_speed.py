"""Seconds per 1 mm MNI-grid volume for `segrenorm harmonize` on CPU, with GFLOP/s and RSS.

The volume is nilearn's MNI152 2009 T1 template at 1 mm (197 x 233 x 189 voxels; the
issue's "182 slices" refers to the older 181 x 217 x 181 grid), harmonized along the axial
plane with untrained weights of each preset (speed does not depend on training). Each
configuration runs in a fresh child process so that its peak resident memory is its own,
and measures, under the same load, an fp32 matmul peak to compare the achieved GFLOP/s with.

In the same child, the inference graph the harmonizer runs (``ConditionedGenerator``) and the
eager reference's (``benchmarks/eager_reference.py``, weights copied) translate the same batch
of padded slices of the volume, alternately (ours, reference, ours, ...), so that the ratio
survives drifts of the machine's speed; each gets its % of the matmul peak.

Usage:
    .venv/bin/python benchmarks/harmonize_speed.py                       # ixi and cpu, batch 16
    .venv/bin/python benchmarks/harmonize_speed.py --batch-sizes 1,4,16 --compile
    .venv/bin/python benchmarks/harmonize_speed.py --json results.json --max-load 0.6 --wait 600
    .venv/bin/python benchmarks/harmonize_speed.py --no-reference     # skip the eager reference
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VOLUME = "MNI152 2009 T1 (nilearn), 1 mm, 197x233x189"


def matmul_peak(threads: int, n: int = 2048, repeats: int = 8) -> float:
    """Best fp32 GFLOP/s of an n x n matmul with ``threads`` intra-op threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def untrained_checkpoint(preset: str, folder: Path, spacing_mm: float = 1.0) -> Path:
    """An untrained translator of ``preset`` saved with axial inference facts at a grid.

    Args:
        preset: a preset name.
        folder: where ``PRESET.pt`` is written.
        spacing_mm: the isotropic grid the checkpoint says it was trained on.
    """
    import torch

    from segrenorm.config.load import load_config
    from segrenorm.models.translator import Translator
    from segrenorm.training.state import build_checkpoint, save_checkpoint

    config = load_config(preset, overrides=["run.device=cpu"])
    torch.manual_seed(0)
    model = Translator.from_config(config)
    scaling = {"low": 50.0, "high": 100.0, "lower_pct": 0.5, "upper_pct": 99.5}
    facts = {
        "slice_axis": "axial", "orientation": "RAS", "spacing": [spacing_mm] * 3,
        "resampled": True, "percentiles": [0.5, 99.5], "use_mask": True, "pad_multiple": 16,
        "site_names": {"A": "source", "B": "target"}, "scaling": {"A": scaling, "B": scaling},
    }  # fmt: skip
    info = {"path": "none", "n_classes": config.data.n_classes, "inference": facts}
    payload = build_checkpoint(
        config=config, cache_info=info, model=model, optimizers={}, schedulers={}, step=0,
        data_stream={},
    )  # fmt: skip
    return save_checkpoint(payload, folder / f"{preset}.pt")


def _flops_per_slice(harmonizer: Any, shape: tuple[int, int]) -> float:
    """FLOPs of translating one padded slice (seg net + extractor + generator)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = harmonizer.primary.translator
    with FlopCounterMode(display=False) as counter:
        model.translate(torch.zeros(2, 1, *shape), harmonizer.options.direction)
    return float(counter.get_total_flops()) / 2


def write_template(folder: Path) -> Path:
    """nilearn's 1 mm MNI152 2009 T1 as a float32 NIfTI (read by the children like any scan)."""
    import nibabel as nib
    import numpy as np
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=1)
    data = np.asarray(template.dataobj, dtype=np.float32)
    path = folder / "mni152_1mm.nii.gz"
    nib.save(nib.Nifti1Image(data, template.affine), str(path))
    return path


def slice_batch(data: Any, batch: int, shape: tuple[int, int]) -> Any:
    """``batch`` axial slices around the middle of the foreground, in [-1, 1], padded with -1.

    Args:
        data: the volume (X, Y, Z) as a NumPy array.
        batch: slices wanted (the volume's foreground slices repeat if it has fewer).
        shape: padded slice shape, at least the volume's (X, Y).

    Returns:
        A float32 tensor (batch, 1, H, W).
    """
    import numpy as np
    import torch

    from segrenorm.volumes.intensity import foreground_mask

    rows = np.flatnonzero(foreground_mask(data).any(axis=(0, 1)))
    middle = len(rows) // 2
    picked = rows[(middle - batch // 2 + np.arange(batch)) % len(rows)]
    low, high = float(np.min(data)), float(np.max(data))
    slices = (np.moveaxis(data[:, :, picked], -1, 0) - low) / max(high - low, 1e-6) * 2 - 1
    out = np.full((batch, 1, *shape), -1.0, dtype=np.float32)
    out[:, 0, : data.shape[0], : data.shape[1]] = slices
    return torch.from_numpy(out)


def time_against_reference(
    harmonizer: Any, x: Any, rounds: int, compile: bool, peak: float
) -> dict[str, Any]:
    """Ours (``ConditionedGenerator``) and the eager reference on the batch ``x``, alternately.

    Args:
        harmonizer: the loaded harmonizer (its primary model, direction and ``seg_batch``).
        x: (B, 1, H, W) padded slices in [-1, 1].
        rounds: timed calls of each, alternating after one untimed call of each.
        compile: time ours under ``torch.compile`` (static shapes), as ``--compile`` runs it.
        peak: the matmul peak in GFLOP/s that the fractions refer to.

    Returns:
        Seconds per batch (best, all), FLOPs, % of the peak and the ratios, as JSON fields.
    """
    import statistics

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from eager_reference import reference_of, reference_translate
    from segrenorm.models.inference import ConditionedGenerator, channels_last_call

    model, opts = harmonizer.primary, harmonizer.options
    # What the harmonizer builds for whole slices (Harmonizer._translation, without tiling).
    module = ConditionedGenerator(model.translator, opts.direction, seg_chunk=opts.seg_batch).eval()
    # As Harmonizer._translation runs it: compiled, or channels-last on CPU.
    ours_fn = torch.compile(module, dynamic=False) if compile else channels_last_call(module)
    ref = reference_of(model.translator, model.config).eval()

    def ours() -> None:
        with torch.inference_mode():
            ours_fn(x)

    def theirs() -> None:
        reference_translate(ref, x, opts.direction)

    counts = []
    for graph in (module, lambda t: reference_translate(ref, t, opts.direction)):
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            graph(x)
        counts.append(float(counter.get_total_flops()))
    ours()  # warm-up (compilation with --compile)
    theirs()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, record in ((ours, times[0]), (theirs, times[1])):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    best = (min(times[0]), min(times[1]))
    pairs = [r / o for o, r in zip(*times, strict=True)]
    return {
        "reference_batch": int(x.shape[0]),
        "ours_batch_seconds": round(best[0], 6),
        "reference_batch_seconds": round(best[1], 6),
        "ours_batch_all_seconds": [round(t, 6) for t in times[0]],
        "reference_batch_all_seconds": [round(t, 6) for t in times[1]],
        "ours_batch_gflop": round(counts[0] / 1e9, 1),
        "reference_batch_gflop": round(counts[1] / 1e9, 1),
        "ours_batch_fraction_of_peak": round(counts[0] / best[0] / 1e9 / peak, 3),
        "reference_fraction_of_peak": round(counts[1] / best[1] / 1e9 / peak, 3),
        "speedup_vs_reference": round(best[1] / best[0], 3),
        "paired_speedup_vs_reference": round(statistics.median(pairs), 3),
    }


def run_one(
    preset: str,
    batch: int,
    compile: bool,
    repeats: int,
    threads: int,
    volume: Path,
    reference_rounds: int = 0,
) -> dict[str, Any]:
    """Time one configuration in this process; return its numbers.

    Args:
        preset: the preset of the untrained model.
        batch: slices per forward pass.
        compile: harmonize with ``torch.compile``.
        repeats: whole-volume runs (the best counts).
        threads: torch intra-op threads.
        volume: the NIfTI volume.
        reference_rounds: alternating timed calls of ours and the eager reference on one
            batch of the volume's slices; 0 skips the reference.
    """
    import torch

    from segrenorm.harmonize.harmonizer import Harmonizer
    from segrenorm.volumes.intensity import foreground_mask
    from segrenorm.volumes.readwrite import load_image
    from segrenorm.volumes.spatial import round_up

    torch.set_num_threads(threads)
    image = load_image(volume)
    data = image.data
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = untrained_checkpoint(preset, Path(tmp))
        harmonizer = Harmonizer.load(ckpt, batch_size=batch, compile=compile, device="cpu")
    stride = harmonizer.primary.translator.stride
    shape = (round_up(data.shape[0], stride), round_up(data.shape[1], stride))
    n_slices = int(foreground_mask(data).any(axis=(0, 1)).sum())
    flops = _flops_per_slice(harmonizer, shape) * n_slices
    peak = matmul_peak(threads)
    start = time.perf_counter()
    harmonizer.run(image)  # warm-up (and compilation with --compile)
    first = time.perf_counter() - start
    times = [first]
    for _ in range(repeats - 1):
        start = time.perf_counter()
        harmonizer.run(image)
        times.append(time.perf_counter() - start)
    best = min(times)
    # Before the reference runs: the peak resident memory of our harmonize alone.
    peak_rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    versus: dict[str, Any] = {}
    if reference_rounds > 0:
        x = slice_batch(data, batch, shape)
        versus = time_against_reference(harmonizer, x, reference_rounds, compile, peak)
    return {
        "preset": preset,
        "batch": batch,
        "compile": compile,
        "threads": threads,
        "slice_shape": list(shape),
        "slices": n_slices,
        "seconds_per_volume": round(best, 2),
        "first_run_seconds": round(first, 2),
        "all_seconds": [round(t, 2) for t in times],
        "slices_per_s": round(n_slices / best, 2),
        "gflop_per_volume": round(flops / 1e9, 1),
        "gflops_achieved": round(flops / best / 1e9, 1),
        "gflops_matmul_peak": round(peak, 1),
        "fraction_of_peak": round(flops / best / 1e9 / peak, 3),
        "peak_rss_gb": round(peak_rss_gb, 2),
        "load_1min_end": round(os.getloadavg()[0], 2),
        **versus,
    }


def describe_reference(result: dict[str, Any]) -> str:
    """The line comparing ours with the eager reference on one batch.

    Args:
        result: a child's numbers with the fields of :func:`time_against_reference`.
    """
    r = result
    return (
        f"     vs eager reference: batch of {r['reference_batch']} slices in "
        f"{r['ours_batch_seconds']:.2f} s against {r['reference_batch_seconds']:.2f} s, "
        f"{r['speedup_vs_reference']:.2f}x faster ({r['paired_speedup_vs_reference']:.2f}x "
        f"median of {len(r['ours_batch_all_seconds'])} alternating pairs); "
        f"{100 * r['ours_batch_fraction_of_peak']:.0f}% against "
        f"{100 * r['reference_fraction_of_peak']:.0f}% of the matmul peak"
    )


def _wait_for_quiet(max_load: float, wait: float) -> float:
    deadline = time.time() + wait
    load = os.getloadavg()[0]
    while load >= max_load and time.time() < deadline:
        time.sleep(10)
        load = os.getloadavg()[0]
    return load


def main(argv: list[str] | None = None) -> int:
    """Time every configuration, each in a child process, and print (and append) the results.

    Args:
        argv: command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        0; a failing configuration is reported and skipped.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", default="ixi,cpu", help="comma-separated presets")
    parser.add_argument("--batch-sizes", default="16", help="comma-separated slice batches")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--repeats", type=int, default=2, help="runs per config (best kept)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--max-load", type=float, default=0.6, help="wait for a quieter CPU")
    parser.add_argument("--wait", type=float, default=0.0, help="seconds to wait for it")
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the eager reference (benchmarks/eager_reference.py)",
    )
    parser.add_argument(
        "--reference-rounds", type=int, default=2, help="alternating timed batches of each"
    )
    parser.add_argument("--json", type=Path, help="append results to this JSON-lines file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference_rounds < 1:
        parser.error(f"--reference-rounds={args.reference_rounds} must be >= 1")
    if args.child:
        preset, batch, compiled, volume = args.child.split(":", 3)
        rounds = args.reference_rounds if args.reference else 0
        result = run_one(
            preset, int(batch), compiled == "1", args.repeats, args.threads, Path(volume), rounds
        )
        print(json.dumps(result))
        return 0
    print(f"volume: {VOLUME}; machine: {os.cpu_count()} CPU cores, threads {args.threads}")
    with tempfile.TemporaryDirectory() as tmp:
        return _run_all(args, write_template(Path(tmp)))


def _run_all(args: argparse.Namespace, volume: Path) -> int:
    configs = [
        (preset, int(batch), compiled)
        for preset in args.presets.split(",")
        for batch in args.batch_sizes.split(",")
        for compiled in ([False, True] if args.compile else [False])
    ]
    for preset, batch, compiled in configs:
        load = _wait_for_quiet(args.max_load, args.wait)
        child = f"{preset}:{batch}:{int(compiled)}:{volume}"
        command = [sys.executable, __file__, "--child", child, "--repeats", str(args.repeats),
                   "--threads", str(args.threads),
                   "--reference-rounds", str(args.reference_rounds)]  # fmt: skip
        if not args.reference:
            command.append("--no-reference")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{preset} {batch} {compiled}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["load_1min_start"] = round(load, 2)
        print(
            f"{preset:4s} batch {batch:2d} compile {compiled!s:5s}: "
            f"{result['seconds_per_volume']:7.2f} s/volume ({result['slices']} slices "
            f"{result['slice_shape'][0]}x{result['slice_shape'][1]}, "
            f"{result['slices_per_s']:.2f} slices/s), {result['gflops_achieved']:.1f} GFLOP/s "
            f"= {100 * result['fraction_of_peak']:.0f}% of matmul peak "
            f"{result['gflops_matmul_peak']:.1f}, peak RSS {result['peak_rss_gb']:.2f} GB, "
            f"load {result['load_1min_start']}->{result['load_1min_end']}",
            flush=True,
        )
        if "speedup_vs_reference" in result:
            print(describe_reference(result), flush=True)
        if args.json:
            with args.json.open("a") as handle:
                handle.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
