"""Cost of N4 bias-field correction per volume, beside the rest of ``segrenorm prepare``.

For each grid of the built-in benchmark (2 mm and 1 mm), this script renders a few virtual
subjects with :func:`segrenorm.simulate.benchmark.simulate_t1` into a temporary folder, then
measures in the same process:

- **rest of prepare**: ``prepare_cache`` of all the rendered volumes with
  ``--bias-correction none`` (reading, reorienting, masking, scaling, cutting, padding and writing
  the cache), divided by the number of volumes;
- **N4 at shrink S**: :meth:`BiasCorrection.apply` alone on each volume as ``prepare`` calls it
  (RAS+ grid, foreground mask, the grid's spacing, the stored default settings and thread count),
  averaged over the volumes;

and prints each N4 cost beside the rest (``ratio`` = N4 / rest; prepare with N4 costs
``1 + ratio`` times prepare without it). Every figure is the median over ``--repeats``
repetitions. Rendering is not timed. Run it on an otherwise idle machine.

Usage:
    .venv/bin/python benchmarks/n4_cost.py [--resolutions 2 1] [--shrinks 2 4] [--subjects 2]
        [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from segrenorm.data.listing import SubjectRecord, read_listing
from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slicing import SliceRecipe
from segrenorm.simulate.benchmark import simulate_t1
from segrenorm.volumes.bias import DEFAULT_BIAS_CORRECTION, NO_BIAS_CORRECTION
from segrenorm.volumes.readwrite import load_image


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _rest_of_prepare(records: list[SubjectRecord], work: Path, repeats: int) -> float:
    """Seconds per volume of ``prepare_cache`` without bias correction."""
    counter = iter(range(repeats))

    def run() -> None:
        prepare_cache(
            records,
            work / f"cache-{next(counter)}",
            bias_correction=NO_BIAS_CORRECTION,
            progress=False,
        )

    return _median_seconds(run, repeats) / len(records)


def _n4_per_volume(
    records: list[SubjectRecord], shrink: int, threads: int | None, repeats: int
) -> float:
    """Seconds per volume of N4 alone, on each volume's prepare grid and foreground mask."""
    bias = dataclasses.replace(DEFAULT_BIAS_CORRECTION, shrink=shrink, threads=threads)
    recipe = SliceRecipe()  # prepare's defaults: no resampling, automatic foreground mask
    total = 0.0
    for record in records:
        image = recipe.to_grid(load_image(record.image))
        run = functools.partial(
            bias.apply, image.data, image.geometry.spacing, recipe.mask(image.data)
        )
        total += _median_seconds(run, repeats)
    return total / len(records)


def main(argv: list[str] | None = None) -> int:
    """Render, time and print one line per grid and shrink factor.

    Args:
        argv: command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        0.
    """
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Usage example: .venv/bin/python benchmarks/n4_cost.py --repeats 3",
    )
    parser.add_argument(
        "--resolutions", type=int, nargs="+", choices=(1, 2), default=[2, 1], help="grids, mm"
    )
    parser.add_argument(
        "--shrinks", type=int, nargs="+", default=[2, 4], help="N4 shrink factors to time"
    )
    parser.add_argument(
        "--subjects", type=int, default=2, help="virtual subjects rendered (on both scanners)"
    )
    parser.add_argument("--repeats", type=int, default=3, help="repetitions; the median is kept")
    parser.add_argument(
        "--threads",
        type=int,
        default=DEFAULT_BIAS_CORRECTION.threads,
        help="N4 worker threads (default: prepare's setting, 1, for reproducible bits); "
        "0 = all cores",
    )
    parser.add_argument("--seed", type=int, default=0, help="simulation seed")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.subjects < 1:
        parser.error("--repeats and --subjects must be at least 1")
    threads = None if args.threads == 0 else args.threads

    print(
        f"N4 cost per volume: subjects={args.subjects} (both scanners) repeats={args.repeats} "
        f"threads={'all' if threads is None else threads} "
        f"iterations={list(DEFAULT_BIAS_CORRECTION.iterations)}"
    )
    print(
        f"{'grid':>5} {'volume':>14} {'rest of prepare':>16} {'shrink':>6} {'N4':>8} {'ratio':>6}"
    )
    with tempfile.TemporaryDirectory(prefix="segrenorm-n4cost-") as tmp:
        for resolution in args.resolutions:
            sim = Path(tmp) / f"sim-{resolution}mm"
            csv = simulate_t1(
                sim,
                n_subjects=args.subjects,
                test_fraction=1.0,
                resolution=resolution,
                seed=args.seed,
            )
            records = read_listing(csv)
            shape = "x".join(str(n) for n in load_image(records[0].image).geometry.shape)
            rest = _rest_of_prepare(records, sim, args.repeats)
            for shrink in args.shrinks:
                n4 = _n4_per_volume(records, shrink, threads, args.repeats)
                print(
                    f"{resolution:>3}mm {shape:>14} {rest:>14.3f} s {shrink:>6} "
                    f"{n4:>6.3f} s {n4 / rest:>6.2f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
