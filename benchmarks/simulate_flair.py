"""Time the FLAIR lesion benchmark against ``simulate t1`` of the same subject count.

The target (issue 12): the default size (5 training subjects on each of SA, SV, PI plus the
held-out ones, which are rendered on every scanner with clean truths) at 2 mm in under a minute
on 2 CPU cores, template loading included. For scale, the same run times ``simulate_t1`` with
as many subjects (its default fractions) and prints the ratio of the two rendering times.

Usage:
    python benchmarks/simulate_flair.py [--subjects-per-scanner 5] [--resolution 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from segrenorm.simulate.anatomy import load_mni152_anatomy
from segrenorm.simulate.benchmark import simulate_t1
from segrenorm.simulate.flair import simulate_flair

TARGET_SECONDS = 60.0


def main(argv: list[str] | None = None) -> int:
    """Run both timings and print seconds, volumes, the ratio and the verdict.

    Args:
        argv: Command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        0 when the FLAIR benchmark is within the target, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects-per-scanner", type=int, default=5, help="training subjects")
    parser.add_argument("--resolution", type=int, choices=(1, 2), default=2, help="mm")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    load_mni152_anatomy(args.resolution).support  # noqa: B018  (warm the cached support too)
    load_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="segrenorm-flairspeed-") as tmp:
        start = time.perf_counter()
        flair_csv = simulate_flair(
            Path(tmp) / "flair",
            subjects_per_scanner=args.subjects_per_scanner,
            resolution=args.resolution,
            seed=args.seed,
            workers=args.workers,
        )
        flair_s = time.perf_counter() - start
        meta = json.loads((flair_csv.parent / "simulation.json").read_text(encoding="utf-8"))
        counts = meta["counts"]
        lesions = sum(s["count"] for s in meta["lesions"].values())
        start = time.perf_counter()
        t1_csv = simulate_t1(
            Path(tmp) / "t1",
            n_subjects=counts["subjects"],
            resolution=args.resolution,
            seed=args.seed,
            workers=args.workers,
        )
        t1_s = time.perf_counter() - start
        t1_volumes = sum(1 for _ in t1_csv.open(encoding="utf-8")) - 1
    total_s = load_s + flair_s
    print(
        f"flair: subjects={counts['subjects']} (test {counts['test']}, val {counts['val']}) "
        f"scans={counts['volumes']} clean={counts['clean']} lesions={lesions} "
        f"resolution={args.resolution}mm workers={args.workers}"
    )
    print(f"template load: {load_s:.1f} s; flair: {flair_s:.1f} s; total {total_s:.1f} s")
    print(
        f"simulate t1 with {counts['subjects']} subjects ({t1_volumes} scans): {t1_s:.1f} s; "
        f"flair / t1 = {flair_s / t1_s:.2f}"
    )
    ok = total_s <= TARGET_SECONDS
    print(f"target {TARGET_SECONDS:.0f} s: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
