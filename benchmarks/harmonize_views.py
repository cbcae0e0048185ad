"""3D consistency of 2D harmonization: one model across views vs one model per view.

On the built-in 2 mm simulated benchmark (1.5T -> 3T, test subjects rendered on both
scanners, so each harmonized volume has a true target), this script

1. prepares one slice cache per plane (axial, coronal, sagittal) from the same subjects;
2. trains one ``cpu``-preset segrenorm model per plane with the same iteration budget;
3. harmonizes every paired test subject with
   - ``rescale``: the source volume linearly mapped to the target's intensity scale (what an
     identity translator gives; the reference for "compared with the input");
   - ``axial`` / ``coronal`` / ``sagittal``: one plane's model along its own plane only
     (no fusion: the flicker shows along that plane's through-plane axis);
   - ``axial x3``: the axial model along all three planes, averaged (one model across axes);
   - ``per-axis x3``: each plane's own model along its plane, averaged;
4. reports, inside the true target's brain mask, the inter-slice jump (mean absolute step
   between adjacent slices) along each axis divided by the same for ``rescale`` and for the
   true target, and the MAE / PSNR against the true target (both scaled to [-1, 1] with the
   true target's foreground percentiles).

Usage:
    .venv/bin/python benchmarks/harmonize_views.py --work /tmp/views --iterations 400
    .venv/bin/python benchmarks/harmonize_views.py --sim /tmp/sim2 --work /tmp/views
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

PLANES = ("axial", "coronal", "sagittal")
AXIS_NAMES = ("x (sagittal)", "y (coronal)", "z (axial)")


def _prepare(sim: Path, work: Path) -> dict[str, Path]:
    from segrenorm.data.listing import read_listing
    from segrenorm.data.prepare import prepare_cache

    records = read_listing(sim / "subjects.csv")
    caches = {}
    for plane in PLANES:
        cache = work / f"cache-{plane}"
        if not (cache / "manifest.json").is_file():
            prepare_cache(records, cache, slice_axis=plane, progress=False)
        caches[plane] = cache
    return caches


def _train(caches: dict[str, Path], work: Path, iterations: int) -> dict[str, Path]:
    from segrenorm.config.load import load_config
    from segrenorm.training.runlog import find_finished_run
    from segrenorm.training.trainer import train

    runs = {}
    for plane, cache in caches.items():
        root = work / f"runs-{plane}"
        config = load_config(
            "cpu",
            overrides=[
                f"optim.iterations={iterations}",
                "optim.decay_iterations=0",
                # The preset eases the cycle/identity terms in over its first quarter.
                f"optim.consistency_warmup={iterations // 4}",
                "run.image_every=0",
                "run.checkpoint_every=0",
                "run.device=cpu",
                f"name=cpu-{plane}",
            ],
        )
        done = find_finished_run(root, config.name, config.model.translator.value)
        if done is not None:
            runs[plane] = done
            continue
        start = time.perf_counter()
        runs[plane] = train(config, cache, root, progress=False)
        print(f"trained {plane}: {time.perf_counter() - start:.0f} s", flush=True)
    return runs


def _jumps(volume: np.ndarray, mask: np.ndarray) -> list[float]:
    from segrenorm.harmonize.fusion import interslice_jump

    return [interslice_jump(volume, axis, mask) for axis in range(3)]


def evaluate(sim: Path, runs: dict[str, Path], n_subjects: int) -> dict[str, Any]:
    """Harmonize the paired test subjects with every method; return per-method means."""
    from segrenorm.evaluate.metrics import mae, psnr
    from segrenorm.harmonize.harmonizer import Harmonizer
    from segrenorm.volumes.intensity import fit_scaling, foreground_mask
    from segrenorm.volumes.readwrite import load_image, load_label

    info = json.loads((sim / "simulation.json").read_text())
    source, target = info["source"]["name"], info["target"]["name"]
    subjects = info["splits"]["test"][:n_subjects]
    methods = {
        "axial": Harmonizer.load(runs["axial"]),
        "coronal": Harmonizer.load(runs["coronal"]),
        "sagittal": Harmonizer.load(runs["sagittal"]),
        "axial x3": Harmonizer.load(runs["axial"], views=",".join(PLANES)),
        "per-axis x3": Harmonizer.load_per_view({p: runs[p] for p in PLANES}),
    }
    target_scale = methods["axial"].primary.facts.target_scaling("AB")
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in ["rescale", *methods]}
    for subject in subjects:
        src_path = sim / "images" / source / f"{subject}_T1w.nii.gz"
        truth = load_image(sim / "images" / target / f"{subject}_T1w.nii.gz").data
        brain = load_label(sim / "labels" / target / f"{subject}_dseg.nii.gz").data > 0
        src = load_image(src_path).data
        head = foreground_mask(src)
        rescaled = target_scale.invert(fit_scaling(src, head).apply(src, head))
        truth_scale = fit_scaling(truth, brain)
        outputs = {"rescale": (rescaled, 0.0)}
        for name, harmonizer in methods.items():
            start = time.perf_counter()
            outputs[name] = (harmonizer.harmonize(src_path).data, time.perf_counter() - start)
        ref_jumps, truth_jumps = _jumps(rescaled, brain), _jumps(truth, brain)
        scaled_truth = truth_scale.apply(truth)
        for name, (volume, seconds) in outputs.items():
            jumps = _jumps(volume, brain)
            scaled = truth_scale.apply(volume)
            rows[name].append(
                {
                    "vs_input": [j / r for j, r in zip(jumps, ref_jumps, strict=True)],
                    "vs_truth": [j / t for j, t in zip(jumps, truth_jumps, strict=True)],
                    "mae": mae(scaled, scaled_truth, mask=brain),
                    "psnr": psnr(scaled, scaled_truth, mask=brain),
                    "seconds": seconds,
                }
            )
        print(f"{subject}: done", flush=True)
    summary: dict[str, Any] = {"subjects": subjects}
    for name, entries in rows.items():
        summary[name] = {
            key: np.mean([e[key] for e in entries], axis=0).round(4).tolist()
            for key in ("vs_input", "vs_truth", "mae", "psnr", "seconds")
        }
    return summary


def markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table."""
    head = (
        "| method | jump x / input | jump y / input | jump z (axial) / input | jump z / true "
        "| MAE vs true | PSNR vs true (dB) | s / volume |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for name, row in summary.items():
        if not isinstance(row, dict):
            continue  # subjects, iterations
        vi, vt = row["vs_input"], row["vs_truth"]
        lines.append(
            f"| {name} | {vi[0]:.3f} | {vi[1]:.3f} | {vi[2]:.3f} | {vt[2]:.3f} | "
            f"{row['mae']:.4f} | {row['psnr']:.2f} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines)


def figure(summary: dict[str, Any], out: Path) -> None:
    """Bars of the inter-slice jump per axis (relative to the rescaled input) per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in summary.items() if isinstance(v, dict)]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.6))
    width = 0.8 / 3
    for a, label in enumerate(AXIS_NAMES):
        values = [summary[n]["vs_input"][a] for n in names]
        left.bar([i + (a - 1) * width for i in range(len(names))], values, width, label=label)
    left.axhline(1.0, color="black", lw=0.8)
    left.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    left.set(ylabel="jump / jump of the rescaled input", title="inter-slice jump by axis")
    left.legend(fontsize=8)
    right.bar(range(len(names)), [summary[n]["mae"] for n in names], color="#3b75af")
    right.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    right.set(ylabel="MAE vs true 3T scan ([-1, 1])", title="error against the paired truth")
    for ax in (left, right):
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sim", type=Path, help="existing `segrenorm simulate` output (2 mm)")
    parser.add_argument("--work", type=Path, required=True, help="folder for caches and runs")
    parser.add_argument("--iterations", type=int, default=400, help="training steps per model")
    parser.add_argument("--subjects", type=int, default=6, help="paired test subjects used")
    parser.add_argument("--json", type=Path, help="write the summary here")
    parser.add_argument("--figure", type=Path, help="write a PNG of the jumps and errors here")
    args = parser.parse_args()
    from segrenorm.simulate.benchmark import simulate_t1

    args.work.mkdir(parents=True, exist_ok=True)
    sim = args.sim
    if sim is None:
        sim = args.work / "sim"
        if not (sim / "subjects.csv").is_file():
            simulate_t1(sim, n_subjects=20, resolution=2, seed=0, workers=os.cpu_count() or 1)
    runs = _train(_prepare(sim, args.work), args.work, args.iterations)
    summary = evaluate(sim, runs, args.subjects)
    summary["iterations"] = args.iterations
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    print(markdown(summary))
    if args.figure:
        figure(summary, args.figure)
    return 0


if __name__ == "__main__":
    sys.exit(main())
