"""Where harmonize inference spends its time, and whether channels-last memory helps.

Times ``Translator.translate`` (segmentation net + extractor + conditioned generator) on one
batch of 1 mm MNI-sized slices (208 x 240 after padding) with untrained weights of a preset,
in the default (contiguous) and the channels-last memory format, then prints the
``torch.profiler`` table of the contiguous run's most expensive operators.

Usage:
    .venv/bin/python benchmarks/harmonize_profile.py                 # ixi, batch 4
    .venv/bin/python benchmarks/harmonize_profile.py --preset cpu --batch 16
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from torch.profiler import ProfilerActivity, profile

from segrenorm.config.load import load_config
from segrenorm.models.translator import Translator


def best_seconds(model: Translator, x: torch.Tensor, repeats: int) -> float:
    """Best wall time of ``repeats`` A->B translations of ``x`` (after one warm-up)."""
    with torch.inference_mode():
        model.translate(x, "AB")
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            model.translate(x, "AB")
            best = min(best, time.perf_counter() - start)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="ixi")
    parser.add_argument("--batch", type=int, default=4, help="slices per forward")
    parser.add_argument("--shape", default="208x240", help="padded slice shape HxW")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.shape.split("x"))
    torch.manual_seed(0)
    model = Translator.from_config(load_config(args.preset, overrides=["run.device=cpu"]))
    model.eval()
    x = torch.randn(args.batch, 1, height, width)

    contiguous = best_seconds(model, x, args.repeats)
    print(f"{args.preset}, batch {args.batch} x {height}x{width}, {args.threads} threads")
    print(f"  contiguous     {contiguous:.3f} s ({args.batch / contiguous:.2f} slices/s)")
    # Module.to accepts memory_format at run time; torch's stubs omit it.
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    last = best_seconds(model, x.contiguous(memory_format=torch.channels_last), args.repeats)
    print(f"  channels-last  {last:.3f} s ({contiguous / last:.2f}x the contiguous speed)")
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model.translate(x, "AB")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
