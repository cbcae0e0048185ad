"""The simulated retinal OCT benchmark end to end: two vendors, fluid pockets, one direction.

Issue 13, Deliver items 5 and 6. Steps, each skipped when its output is already there:

1. ``segrenorm simulate oct --out OUT/data --scale S --subjects-per-vendor N --vendors ...``
   (or ``--data DIR``, a ``simulate oct`` folder of those vendors);
2. ``segrenorm prepare --csv DATA/subjects.csv --out OUT/cache --modality oct --target TGT``
   (the target is the last vendor, Spectralis by default; classes ``background, IRF, SRF,
   PED``; no bias correction: OCT gets none);
3. for each translator (``--translators``, default segrenorm s-cyclegan semgan cyclegan:
   SemGAN runs on the four fluid classes, as in the paper) and seed (``--seeds``): the
   ``--config`` preset (default ``retouch-cpu``; ``cpu`` with the ``retouch`` classes and
   weights where that preset does not exist) with the ``--set`` overrides, trained into
   ``OUT/runs/`` from the first vendor toward the last. A run that finished with exactly that
   config on that cache is reused, one stopped part-way resumed; ``--train-only --shard I/N``
   trains every N-th job from I (run N such processes with ``OMP_NUM_THREADS=1`` after one
   ``--prepare-only``);
4. one ``evaluate`` on ``--split`` (val or test) with every run and every classical pipeline
   (the suite leaves the N4 ones out on OCT), into ``OUT/report-<split>/``.

It prints per method (mean ± std over the training seeds for the learned ones) a table of
image figures: paired SSIM/PSNR against the noisy and the clean target render, the KID ratio,
the generalized Dice, the background stripe energy (row + column) and its ratio to the target
scanner's own (``results["artefacts"]``); and one table per fluid class (IRF, SRF, PED): the target
segmentor's Dice and IoU, its Dice-gap recovery (with the class's two reference Dice values:
target segmentor on the source, source in-domain) and, where ``results["lesions"]`` scores
that class, the removed (false negative), hallucinated (false positive) and detected pockets.
The same numbers go to ``OUT/oct.json``, under the split (a val run and a test run keep both).
``--dry-run`` prints the commands and the training plan and runs nothing.

Usage:
    .venv/bin/python benchmarks/oct.py --out OUT [--data DIR] [--scale 0.5]
        [--subjects-per-vendor 24] [--vendors Cirrus Spectralis] [--baselines ...]
        [--config retouch-cpu] [--set optim.iterations=3000] [--seeds 0 1 2]
        [--translators segrenorm s-cyclegan semgan cyclegan] [--split val|test]
        [--eval-set ...] [--dry-run] [--prepare-only] [--train-only --shard 0/2]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from segrenorm.atomic import write_json_atomic
from segrenorm.cli import main as cli
from segrenorm.config.load import load_config
from segrenorm.config.presets import PRESETS
from segrenorm.config.schema import Config
from segrenorm.evaluate.lesion_lens import lesion_results
from segrenorm.simulate.retina import FLUID_CLASSES

# The job plan, the reuse-or-train loop and the figure helpers are flair.py's: the same steps,
# one direction instead of three.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from flair import Job, _label, _mean, plan, train_jobs

__all__ = ["Job", "base_config", "direction_table", "main", "method_figures", "print_table"]

TRANSLATORS = ("segrenorm", "s-cyclegan", "semgan", "cyclegan")
VENDORS = ("Cirrus", "Spectralis")
#: The cache's classes: RETOUCH's labels 0-3.
CLASS_NAMES = FLUID_CLASSES
PRESET = "retouch-cpu"
FALLBACK = ("cpu", ["data.n_classes=4", "loss.class_weights=[0.3, 0.7]"])
SCALE, SUBJECTS = 0.5, 24
#: The image table's columns, in order (a column no method has is left out).
IMAGE_FIGURES = (
    "SSIM", "PSNR", "SSIM clean", "PSNR clean", "KID ratio", "GDice", "artefacts",
    "artefact ratio",
)  # fmt: skip
#: Each fluid class's columns, named ``"<figure> <class>"`` in the method figures.
CLASS_FIGURES = ("Dice", "IoU", "recovery", "removed", "hallucinated", "detected")


def base_config(name: str, overrides: Sequence[str], say: Callable[[str], None] = print) -> Config:
    """The shared config: ``name`` (falling back from a missing ``retouch-cpu``) + overrides.

    Args:
        name: a preset name or a YAML file.
        overrides: ``section.field=value`` items.
        say: where the fallback note goes.

    Returns:
        The validated config.
    """
    extra: list[str] = []
    if name == PRESET and name not in PRESETS:
        name, extra = FALLBACK[0], list(FALLBACK[1])
        say(f"note: no {PRESET} preset here; using {name} --set {' --set '.join(extra)}")
    return load_config(name, overrides=[*extra, *overrides])


def _fluid_names(results: dict[str, Any]) -> list[str]:
    """The foreground classes of the results (the cache's, background first)."""
    names = list(results.get("class_names") or CLASS_NAMES)
    return [str(name) for name in names[1:]]


def _per_class(values: Any, k: int) -> Any:
    return values[k] if isinstance(values, list) and len(values) > k else None


def _dice_of(rows: dict[str, Any], row: str, k: int) -> float | None:
    return _mean(_per_class(((rows.get(row) or {}).get("dice") or {}).get("mean"), k))


def _recovery(seg: dict[str, Any], method: str, k: int) -> float | None:
    """Class ``k``'s Dice-gap recovery of a method, the lens's own where it gave one.

    Otherwise ``(Dice[target→method] - Dice[target→none]) / (Dice[source→source] -
    Dice[target→none])`` from the seed-averaged rows; None without a positive gap.
    """
    given = _per_class((seg.get("gap_recovery") or {}).get(method), k)
    if given is not None or "gap_recovery" in seg:
        return _mean(given)
    rows = seg.get("rows") or {}
    after, lower = _dice_of(rows, f"target→{method}", k), _dice_of(rows, "target→none", k)
    upper = _dice_of(rows, "source→source", k)
    if after is None or lower is None or upper is None or upper <= lower:
        return None
    return (after - lower) / (upper - lower)


def _artefacts(results: dict[str, Any], method: str) -> tuple[Any, Any]:
    """A method's background stripe energy (row + column) and its ratio to the target's."""
    entry = ((results.get("artefacts") or {}).get("methods") or {}).get(method) or {}
    return entry.get("total_mean"), entry.get("total_ratio")


def method_figures(results: dict[str, Any], method: str) -> dict[str, float]:
    """The headline numbers of one method of the benchmark's ``results.json``.

    Args:
        results: the evaluation's results.
        method: a method name of ``results["methods"]``.

    Returns:
        Figure name -> value, only the figures the results hold (NaN counts as absent).
    """
    paired = (results.get("paired") or {}).get("methods", {}).get(method) or {}
    clean = paired.get("clean") or {}
    dist = (results.get("distribution") or {}).get("methods", {}).get(method) or {}
    seg = results.get("segmentation") or {}
    row = (seg.get("rows") or {}).get(f"target→{method}") or {}
    energy, ratio = _artefacts(results, method)
    values: dict[str, Any] = {
        "SSIM": paired.get("ssim"), "PSNR": paired.get("psnr"),
        "SSIM clean": clean.get("ssim"), "PSNR clean": clean.get("psnr"),
        "KID ratio": dist.get("kid_ratio"), "GDice": row.get("generalized_dice"),
        "artefacts": energy, "artefact ratio": ratio,
    }  # fmt: skip
    pockets = lesion_results(results.get("lesions")).get("classes") or {}
    for k, name in enumerate(_fluid_names(results), start=1):
        values[f"Dice {name}"] = _per_class((row.get("dice") or {}).get("mean"), k)
        values[f"IoU {name}"] = _per_class((row.get("iou") or {}).get("mean"), k)
        values[f"recovery {name}"] = _recovery(seg, method, k)
        pocket = pockets.get(name) or {}
        found = ((pocket.get("detection") or {}).get("methods") or {}).get(method) or {}
        for key, figure in (("fn", "removed"), ("fp", "hallucinated"), ("tp", "detected")):
            values[f"{figure} {name}"] = found.get(key)
    return {key: v for key, value in values.items() if (v := _mean(value)) is not None}


def _references(results: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per fluid class its two reference Dice values; ``artefacts``: the target's energy."""
    rows = (results.get("segmentation") or {}).get("rows") or {}
    named = (("target on source", "target→none"), ("source in-domain", "source→source"))
    out: dict[str, dict[str, float]] = {}
    for k, name in enumerate(_fluid_names(results), start=1):
        refs = {label: d for label, row in named if (d := _dice_of(rows, row, k)) is not None}
        if refs:
            out[name] = refs
    target = ((results.get("artefacts") or {}).get("target") or {}).get("total_mean")
    if (energy := _mean(target)) is not None:
        out["artefacts"] = {"target": energy}
    return out


def direction_table(results: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
    """Per method label, each figure's mean, std (over training seeds) and count.

    Args:
        results: the evaluation's results.
        seeds: the training seeds (``segrenorm-s0`` and ``segrenorm-s1`` are one label).

    Returns:
        ``{"sites", "classes", "reference", "methods"}``: JSON-ready.
    """
    groups: dict[str, dict[str, list[float]]] = {}
    for method in results["methods"]:
        label = _label(method, seeds)
        for key, value in method_figures(results, method).items():
            groups.setdefault(label, {}).setdefault(key, []).append(value)
    table: dict[str, dict[str, dict[str, float]]] = {}
    for label, figures in groups.items():
        table[label] = {}
        for key, v in figures.items():
            spread = statistics.stdev(v) if len(v) > 1 else 0.0
            table[label][key] = {"mean": statistics.fmean(v), "std": spread, "n": len(v)}
    return {"sites": results.get("sites"), "classes": _fluid_names(results),
            "reference": _references(results), "methods": table}  # fmt: skip


def _number(value: float) -> str:
    """Four decimals; small energies (stripe powers of 1e-6) in scientific notation."""
    return f"{value:.3e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"


def _block(title: str, methods: dict[str, Any], keys: Sequence[str], out: Callable[[str], None],
           suffix: str = "") -> None:  # fmt: skip
    keys = [k for k in keys if any(k + suffix in row for row in methods.values())]
    if not keys:
        return
    out(f"\n{title}")
    out(f"{'method':26s}" + "".join(f"{k:>18s}" for k in keys))
    for label, row in methods.items():
        cells = []
        for key in keys:
            cell = row.get(key + suffix)
            text = "" if cell is None else _number(cell["mean"])
            if cell is not None and cell["n"] > 1:
                text += f" ± {_number(cell['std'])}"
            cells.append(f"{text:>18s}")
        out(f"{label:26s}" + "".join(cells))


def print_table(direction: str, entry: dict[str, Any], out: Callable[[str], None] = print) -> None:
    """The image table, then one table per fluid class, of the columns any method has.

    Args:
        direction: the title, e.g. ``Cirrus -> Spectralis``.
        entry: a :func:`direction_table`.
        out: where the lines go.
    """
    methods, refs = entry["methods"], entry["reference"]
    energies = refs.get("artefacts", {})
    note = ", ".join(f"{site} {value:.4g}" for site, value in energies.items())
    _block(f"{direction}: images" + (f" (background artefacts: {note})" if note else ""),
           methods, IMAGE_FIGURES, out)  # fmt: skip
    for name in entry["classes"]:
        note = ", ".join(f"{k} {v:.3f}" for k, v in refs.get(name, {}).items())
        _block(f"{direction}: {name}" + (f" (Dice: {note})" if note else ""), methods,
               CLASS_FIGURES, out, suffix=f" {name}")  # fmt: skip


def _run(argv: list[str], args: argparse.Namespace, what: str) -> None:
    """Run one segrenorm command, or print it in a dry run."""
    if args.dry_run:
        print(f"would {what}: segrenorm {shlex.join(argv)}")
    elif cli(argv) != 0:
        sys.exit(f"oct: segrenorm {shlex.join(argv)} failed (see above)")


def _data(args: argparse.Namespace, out: Path) -> Path:
    data = Path(args.data) if args.data else out / "data"
    if (data / "subjects.csv").is_file():
        return data
    if args.data:
        sys.exit(f"oct: {data}/subjects.csv not found: give a segrenorm simulate oct folder")
    if args.shard != "0/1":
        sys.exit(f"oct: {data} is missing: run once with --prepare-only, then the shards")
    argv = ["simulate", "oct", "--out", str(data), "--scale", str(args.scale),
            "--subjects-per-vendor", str(args.subjects_per_vendor), "--vendors",
            *args.vendors]  # fmt: skip
    _run(argv, args, "simulate")
    return data


def _cache(args: argparse.Namespace, data: Path, out: Path) -> Path:
    cache = out / "cache"
    if (cache / "manifest.json").is_file():
        return cache
    if args.shard != "0/1":
        sys.exit(f"oct: {cache} is missing: run once with --prepare-only, then the shards")
    argv = ["prepare", "--csv", str(data / "subjects.csv"), "--out", str(cache), "--modality",
            "oct", "--target", args.vendors[-1], "--class-names", *CLASS_NAMES,
            "--bias-correction", "none", "--quiet"]  # fmt: skip
    _run(argv, args, "prepare")
    return cache


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise SystemExit(f"oct: --shard {text!r} is not I/N with 0 <= I < N, e.g. 0/2")
    return int(index), int(count)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", required=True, help="working folder")
    parser.add_argument("--data", help="a segrenorm simulate oct folder (default: simulate)")
    parser.add_argument("--scale", type=float, default=SCALE, help="simulate oct --scale")
    parser.add_argument("--subjects-per-vendor", type=int, default=SUBJECTS,
                        help=f"simulate oct's (default here {SUBJECTS})")  # fmt: skip
    parser.add_argument("--vendors", nargs="+", default=list(VENDORS), metavar="VENDOR",
                        help="simulate oct's vendors: the first is the source, the last the "
                        "target (default: Cirrus Spectralis)")  # fmt: skip
    parser.add_argument("--config", default=PRESET, help="preset or YAML")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--translators", nargs="+", default=list(TRANSLATORS))
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--baselines", nargs="*", help="classical pipelines (default: all)")
    parser.add_argument("--eval-set", action="append", default=[], dest="eval_overrides")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--prepare-only", action="store_true", help="simulate and prepare only")
    parser.add_argument("--train-only", action="store_true", help="no evaluation")
    parser.add_argument("--shard", default="0/1", help="I/N: train every N-th job from I")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (see the module docstring).

    Args:
        argv: the options (default: the command line).

    Returns:
        0; a failed step exits with its message.
    """
    args = _parser().parse_args(argv)
    args.command = ["benchmarks/oct.py", *(sys.argv[1:] if argv is None else argv)]
    shard, out = _shard(args.shard), Path(args.out)
    if len(args.vendors) < 2:
        sys.exit(f"oct: --vendors {' '.join(args.vendors)} names one vendor: give the source "
                 "first and the target last, e.g. --vendors Cirrus Spectralis")  # fmt: skip
    if shard[1] > 1 and not args.train_only:
        sys.exit("oct: --shard trains only: add --train-only, then evaluate in one process")
    config = base_config(args.config, args.overrides)
    cache = _cache(args, _data(args, out), out)
    if args.prepare_only:
        return 0
    direction = (args.vendors[0], args.vendors[-1])
    if (cache / "manifest.json").is_file():
        from segrenorm.workflows.pairs import resolve_pairs

        direction = resolve_pairs(config, cache, [direction])[0]
    jobs = plan(config, [direction], args.translators, args.seeds)
    done = train_jobs(jobs, cache, out / "runs", shard, dry_run=args.dry_run)
    if args.dry_run:
        print(f"would evaluate on the {args.split} split into {out / f'report-{args.split}'}")
    if args.dry_run or args.train_only:
        return 0
    return _evaluate(args, cache, out, direction, done)


def _evaluate(
    args: argparse.Namespace, cache: Path, out: Path, direction: tuple[str, str],
    done: dict[Job, Path | None],
) -> int:  # fmt: skip
    """One evaluate of every run and pipeline; the tables printed and written to oct.json."""
    from segrenorm.config.overrides import apply_overrides
    from segrenorm.evaluate.methods import BASELINES
    from segrenorm.evaluate.suite import EvaluationConfig
    from segrenorm.workflows.evaluate import evaluate_cache

    missing = [job.method for job, path in done.items() if path is None]
    if missing:
        sys.exit(f"oct: {direction[0]} -> {direction[1]} lacks finished runs {missing}: train "
                 "them")  # fmt: skip
    runs = {job.method: path for job, path in done.items() if path is not None}
    # The suite itself leaves the N4 pipelines out on an OCT cache, with its reason.
    baselines = BASELINES if args.baselines is None else args.baselines
    report = out / f"report-{args.split}"
    _, results = evaluate_cache(
        cache, report, models=runs, baselines=baselines,
        config=apply_overrides(EvaluationConfig(), args.eval_overrides), split=args.split,
        title=f"OCT benchmark {direction[0]} -> {direction[1]}, {args.split} split",
    )  # fmt: skip
    summary = {"seeds": args.seeds, "command": args.command, "config": args.config,
               "overrides": args.overrides, "scale": args.scale,
               "subjects_per_vendor": args.subjects_per_vendor,
               "direction": f"{direction[0]}->{direction[1]}",
               **direction_table(results, args.seeds), "report": str(report)}  # fmt: skip
    print_table(f"{direction[0]} -> {direction[1]}", summary)
    record = out / "oct.json"
    previous = json.loads(record.read_text()) if record.is_file() else {}
    write_json_atomic(record, {**previous, args.split: summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
