"""Time the built-in T1 benchmark: N subjects rendered on both scanners into a temp folder.

The target is 20 subjects x 2 scanners (40 volumes) at 2 mm in under 30 s on 2 CPU cores.
Rendering every subject on both sites is ``simulate_t1(..., test_fraction=1.0)``, so this times
the public API end to end, including NIfTI compression. Loading the MNI templates (once per
process) is timed separately and included in the total.

Usage:
    python benchmarks/simulate_speed.py [--subjects 20] [--resolution 2] [--workers 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from segrenorm.simulate.anatomy import load_mni152_anatomy
from segrenorm.simulate.benchmark import simulate_t1

TARGET_SECONDS = 30.0


def main(argv: list[str] | None = None) -> int:
    """Run the timing and print seconds total, per volume and against the target.

    Args:
        argv: Command-line arguments (defaults to ``sys.argv[1:]``).

    Returns:
        0 when within the target, 1 otherwise.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=20, help="virtual subjects")
    parser.add_argument("--resolution", type=int, choices=(1, 2), default=2, help="mm")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    load_mni152_anatomy(args.resolution).support  # noqa: B018  (warm the cached support too)
    load_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory(prefix="segrenorm-simspeed-") as tmp:
        start = time.perf_counter()
        csv_path = simulate_t1(
            Path(tmp) / "t1",
            n_subjects=args.subjects,
            test_fraction=1.0,
            resolution=args.resolution,
            seed=args.seed,
            workers=args.workers,
        )
        render_s = time.perf_counter() - start
        volumes = sum(1 for _ in csv_path.open(encoding="utf-8")) - 1
    total_s = load_s + render_s
    print(
        f"subjects={args.subjects} resolution={args.resolution}mm workers={args.workers} "
        f"volumes={volumes}"
    )
    print(f"template load: {load_s:.2f} s (once per process)")
    print(f"render+write:  {render_s:.2f} s ({render_s / volumes:.3f} s per volume)")
    print(f"total:         {total_s:.2f} s ({total_s / volumes:.3f} s per volume)")
    print(f"vs target:     {total_s / TARGET_SECONDS:.2f} x the {TARGET_SECONDS:.0f} s budget")
    return 0 if total_s <= TARGET_SECONDS else 1


if __name__ == "__main__":
    raise SystemExit(main())
