"""Time ``segrenorm simulate oct`` at the CPU demo size and one full-size volume per vendor.

Three timings in one run, on the same machine and load:

1. ``simulate_oct`` at ``--scale`` (0.5 by default: the CPU demo) with its default subject
   count (24 training subjects per vendor, held-out subjects on both vendors with clean renders);
2. one eye rasterised and rendered at full size (Table II grids) on each vendor, the target
   being well under 30 s per volume;
3. ``simulate_flair`` at 2 mm with 5 subjects per scanner (issue 12's default), for scale: the
   ratio of (1) to (3) is printed.

``--dry-run`` shrinks everything to seconds (2 subjects per vendor at scale 0.05, no full-size
render, 1 FLAIR subject per scanner), to check the script on a busy machine.

Usage:
    python benchmarks/simulate_oct.py [--scale 0.5] [--workers 2] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from segrenorm.simulate.flair import simulate_flair
from segrenorm.simulate.oct import OCT_VENDORS, simulate_oct
from segrenorm.simulate.oct_render import render_oct
from segrenorm.simulate.oct_vendors import load_vendor
from segrenorm.simulate.retina import OctGrid, rasterise, sample_retina

FULL_SIZE_TARGET_S = 30.0


def _full_size(seed: int) -> dict[str, tuple[float, float]]:
    """Seconds to rasterise and to render one eye on each vendor's Table II grid."""
    eye = sample_retina(np.random.default_rng(seed))
    times = {}
    for name in OCT_VENDORS:
        vendor = load_vendor(name)
        start = time.perf_counter()
        volume = rasterise(eye, OctGrid(vendor.shape, vendor.spacing))
        middle = time.perf_counter()
        render_oct(volume, vendor, np.random.default_rng(seed))
        times[name] = (middle - start, time.perf_counter() - middle)
    return times


def main(argv: list[str] | None = None) -> int:
    """Run the timings and print seconds, counts, the ratio to FLAIR and the verdict.

    Args:
        argv: Command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        0 when every full-size volume renders within the target (or on a dry run), 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=0.5, help="simulate oct --scale")
    parser.add_argument("--subjects-per-vendor", type=int, default=24, help="training subjects")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, seconds in all")
    args = parser.parse_args(argv)
    scale, per_vendor, flair_per = args.scale, args.subjects_per_vendor, 5
    if args.dry_run:
        scale, per_vendor, flair_per = 0.05, 2, 1

    with tempfile.TemporaryDirectory(prefix="segrenorm-octspeed-") as tmp:
        start = time.perf_counter()
        csv_path = simulate_oct(Path(tmp) / "oct", subjects_per_vendor=per_vendor, scale=scale,
                                seed=args.seed, workers=args.workers)  # fmt: skip
        oct_s = time.perf_counter() - start
        counts = json.loads((csv_path.parent / "simulation.json").read_text("utf-8"))["counts"]
        start = time.perf_counter()
        simulate_flair(Path(tmp) / "flair", subjects_per_scanner=flair_per, resolution=2,
                       seed=args.seed, workers=args.workers)  # fmt: skip
        flair_s = time.perf_counter() - start
    print(
        f"simulate oct: scale={scale} subjects={counts['subjects']} (test {counts['test']}, "
        f"val {counts['val']}) scans={counts['volumes']} clean={counts['clean']} "
        f"workers={args.workers}: {oct_s:.1f} s"
    )
    print(f"simulate flair (2 mm, {flair_per} per scanner): {flair_s:.1f} s; "
          f"oct / flair = {oct_s / flair_s:.2f}")  # fmt: skip
    if args.dry_run:
        print("dry run: full-size volumes skipped")
        return 0
    ok = True
    for name, (raster_s, render_s) in _full_size(args.seed).items():
        shape = "x".join(map(str, load_vendor(name).shape))
        print(f"full size {name} {shape}: rasterise {raster_s:.1f} s, render {render_s:.1f} s")
        ok = ok and raster_s + render_s <= FULL_SIZE_TARGET_S
    print(f"full-size target {FULL_SIZE_TARGET_S:.0f} s per volume: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
