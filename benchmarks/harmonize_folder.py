"""Volumes per minute for `segrenorm harmonize` over a folder: one file after another at batch 16
against reading, translating and writing overlapped with the automatic slice batch.

The folder holds N (default 20) volumes made here from nilearn's MNI152 2009 T1 template at
2 mm (99 x 117 x 95 voxels, int16, gzipped NIfTI), each with its own intensity scale and
noise so no two files are alike. They are harmonized through the public path
(:func:`segrenorm.harmonize.files.harmonize_paths`) with an untrained checkpoint of the preset
(speed does not depend on training), in two variants:

- ``sequential``: one file after another, ``batch_size=16`` (the behaviour before ``auto``);
- ``overlapped``: the next file read while one is translated and the previous one written,
  ``batch_size="auto"``.

Each run is a child process (its own peak RSS), runs alternate (A, B, A, B, ...) so a slower
phase of the machine hits both, and the best run of each is kept. A run's time includes
loading the model and, for ``auto``, timing the candidate batches: what a user waits for.

Usage:
    .venv/bin/python benchmarks/harmonize_folder.py                      # 20 volumes, cpu
    .venv/bin/python benchmarks/harmonize_folder.py --volumes 4 --preset cpu --rounds 1
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: variant -> (overlap, batch_size) of harmonize_paths.
VARIANTS: dict[str, tuple[bool, int | str]] = {
    "sequential": (False, 16),
    "overlapped": (True, "auto"),
}


def make_volume(template: np.ndarray, seed: int) -> np.ndarray:
    """One subject's volume from the template: its own intensity scale, offset and noise.

    Args:
        template: the template's intensities (any range; its maximum is mapped to ~1000).
        seed: the subject's random seed.

    Returns:
        An int16 volume of the template's shape, 0 outside the template's support.
    """
    rng = np.random.default_rng(seed)
    base = np.asarray(template, dtype=np.float64)
    base = base / max(float(base.max()), 1e-9) * 1000.0
    scale, offset = rng.uniform(0.8, 1.2), rng.uniform(-20.0, 20.0)
    noisy = base * scale + offset + rng.normal(0.0, 10.0, base.shape)
    noisy[base <= 0] = 0.0  # air stays air
    return np.clip(np.rint(noisy), 0, np.iinfo(np.int16).max).astype(np.int16)


def volumes_per_minute(volumes: int, seconds: float) -> float:
    """Throughput of a run.

    Args:
        volumes: volumes harmonized.
        seconds: the run's wall time.
    """
    return 60.0 * volumes / seconds if seconds > 0 else float("inf")


def schedule(variants: Sequence[str], rounds: int) -> list[str]:
    """The order of the runs: every variant once per round, alternating (A, B, A, B, ...).

    Args:
        variants: variant names.
        rounds: runs of each variant.
    """
    return [name for _ in range(rounds) for name in variants]


def best_runs(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The fastest run of each variant (fewest seconds), in the order variants first ran.

    Args:
        runs: the child processes' results, each with ``variant`` and ``seconds``.
    """
    best: dict[str, dict[str, Any]] = {}
    for run in runs:
        kept = best.get(run["variant"])
        if kept is None or run["seconds"] < kept["seconds"]:
            best[run["variant"]] = run
    return best


def summary_lines(best: dict[str, dict[str, Any]]) -> list[str]:
    """One line per variant, then the ratio of overlapped to sequential throughput.

    Args:
        best: the kept run of each variant (see :func:`best_runs`).
    """
    lines = []
    for name, run in best.items():
        lines.append(
            f"{name:10s}: {run['volumes_per_min']:7.1f} volumes/min ({run['seconds']:.1f} s for "
            f"{run['volumes']} volumes), batch {run['batch']}, peak RSS {run['peak_rss_gb']:.2f} GB"
        )
    if {"sequential", "overlapped"} <= set(best):
        ratio = best["overlapped"]["volumes_per_min"] / best["sequential"]["volumes_per_min"]
        lines.append(f"overlapped + auto batch / sequential + batch 16: {ratio:.2f}x")
    return lines


def _checkpoint(preset: str, folder: Path) -> Path:
    """An untrained translator of ``preset`` saved with 2 mm axial inference facts."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from harmonize_speed import untrained_checkpoint

    return untrained_checkpoint(preset, folder, spacing_mm=2.0)


def write_folder(folder: Path, volumes: int) -> Path:
    """``volumes`` subjects made from the 2 mm MNI template, as gzipped int16 NIfTI files."""
    import nibabel as nib
    from nilearn import datasets

    template = datasets.load_mni152_template(resolution=2)
    data = np.asarray(template.dataobj, dtype=np.float32)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(volumes):
        image = nib.Nifti1Image(make_volume(data, seed=i), template.affine)
        nib.save(image, str(folder / f"sub-{i:03d}_T1w.nii.gz"))
    return folder


def run_child(variant: str, folder: Path, model: Path, out: Path, threads: int) -> dict[str, Any]:
    """Harmonize the folder with one variant in this process; return its numbers."""
    import torch

    from segrenorm.harmonize.batching import chosen_batches
    from segrenorm.harmonize.files import harmonize_paths
    from segrenorm.harmonize.harmonizer import HarmonizeOptions

    torch.set_num_threads(threads)
    overlap, batch = VARIANTS[variant]
    options = HarmonizeOptions(batch_size=batch)
    start = time.perf_counter()
    summary = harmonize_paths(
        [folder], out, model, options=options, device="cpu", progress=False, overlap=overlap
    )
    seconds = time.perf_counter() - start
    ok = sum(r.status == "ok" for r in summary.results)
    chosen = chosen_batches()
    return {
        "variant": variant,
        "volumes": ok,
        "failed": len(summary.results) - ok,
        "seconds": round(seconds, 3),
        "volumes_per_min": round(volumes_per_minute(ok, seconds), 2),
        "batch": chosen[0].batch if chosen else batch,
        "batch_rates": [list(pair) for pair in chosen[0].rates] if chosen else [],
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3),
        "threads": threads,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--volumes", type=int, default=20, help="volumes in the folder (20)")
    parser.add_argument("--preset", default="cpu", help="model preset (cpu)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each variant (2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="append the kept runs to this JSON-lines file")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        variant, folder, model, out = args.child
        print(json.dumps(run_child(variant, Path(folder), Path(model), Path(out), args.threads)))
        return 0
    if args.volumes < 1 or args.rounds < 1:
        parser.error(f"--volumes {args.volumes} and --rounds {args.rounds} must be at least 1")
    print(
        f"{args.volumes} MNI152 2 mm volumes (99x117x95, int16 .nii.gz), preset {args.preset}, "
        f"{os.cpu_count()} CPU cores, {args.threads} torch threads",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        folder = write_folder(root / "in", args.volumes)
        model = _checkpoint(args.preset, root)
        runs = []
        for index, variant in enumerate(schedule(list(VARIANTS), args.rounds)):
            out = root / f"out-{index}"
            command = [sys.executable, __file__, "--threads", str(args.threads), "--child",
                       variant, str(folder), str(model), str(out)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{variant}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            run = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"run {index + 1} {variant}: {run['seconds']:.1f} s, batch {run['batch']}",
                flush=True,
            )
            runs.append(run)
    best = best_runs(runs)
    print("\n".join(summary_lines(best)))
    if args.json:
        with args.json.open("a") as handle:
            for run in best.values():
                handle.write(json.dumps({**run, "preset": args.preset}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
