"""The simulated FLAIR lesion benchmark end to end: three scanners, three directions.

Issue 12, Deliver items 2 and 6. Steps, each skipped when its output is already there:

1. ``segrenorm simulate flair --out OUT/data --resolution R --labels L`` (or ``--data DIR``);
2. ``segrenorm prepare --csv DATA/subjects.csv --out OUT/cache --target GRID --headroom H``
   (3 sites on the grid of ``--grid``, SV by default; headroom 1 by default, so that lesions
   keep their contrast instead of clipping at 1). The classes are the label set's:
   ``background, lesion`` for ``--labels lesion`` (the default), ``background, CSF, GM, WM,
   lesion`` for ``tissue+lesion``; a ``--data`` folder's own set (its ``simulation.json``)
   is used when ``--labels`` is not given, and one that differs from ``--labels`` is refused.
   The training configs get ``data.n_classes`` = the number of classes;
3. for each direction (``--directions``, default the paper's SA:SV,SA:PI,SV:PI), translator
   (``--translators``, default segrenorm s-cyclegan cyclegan: SemGAN is excluded on lesion
   masks, as in the paper) and seed (``--seeds``): the ``--config`` preset (default
   ``msseg-cpu``; ``cpu --set data.n_classes=2`` where that preset does not exist) with the
   ``--set`` overrides, ``run.seed`` = the seed and ``data.source/target`` = the direction,
   trained into ``OUT/runs/``. A run that finished with exactly that config on that cache is
   reused, one stopped part-way resumed; ``--train-only --shard I/N`` trains every N-th job
   from I (run N such processes with ``OMP_NUM_THREADS=1`` after one ``--prepare-only``);
4. one ``evaluate`` per direction on ``--split`` (val or test) with every run of that
   direction and every classical pipeline, into ``OUT/report-<source>-to-<target>-<split>/``;
   the post-hoc segmentors are kept in ``OUT/segmentors/``, so that each site's train once
   for every direction and split (``evaluate --segmentors``).

It prints, per direction and method (mean ± std over the training seeds for the learned
ones), paired SSIM/PSNR against the noisy and the clean target render, the KID ratio, the
target segmentor's lesion Dice and IoU, its Dice-gap recovery (with the direction's two
reference Dice values: target segmentor on the source, source in-domain), the Dice-gap
recovery of every other class (``recovery WM`` and so on, with ``--labels tissue+lesion``),
and, where ``results.json`` has a ``lesions`` key, the removed (false negative) and
hallucinated (false positive) lesion counts, per-lesion Dice, the lesion-to-NAWM contrast
ratio and the contrast inversions. The same numbers go to ``OUT/flair.json``, under the
split (a val run and a test run keep both).

Usage:
    .venv/bin/python benchmarks/flair.py --out OUT [--data DIR] [--resolution 2]
        [--subjects-per-scanner 5] [--labels lesion|tissue+lesion] [--grid SV]
        [--headroom 1] [--bias-correction n4|none]
        [--baselines ...]
        [--config msseg-cpu] [--set optim.iterations=3000] [--seeds 0 1 2]
        [--translators segrenorm s-cyclegan cyclegan] [--directions SA:SV,SA:PI,SV:PI]
        [--split val|test] [--eval-set ...] [--dry-run] [--prepare-only]
        [--train-only --shard 0/2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segrenorm.atomic import write_json_atomic
from segrenorm.cli import main as cli
from segrenorm.cli.train_cmd import parse_pairs
from segrenorm.config.build import config_from_dict
from segrenorm.config.load import load_config
from segrenorm.config.presets import PRESETS
from segrenorm.config.schema import Config, TranslatorKind
from segrenorm.evaluate.lesion_lens import lesion_results
from segrenorm.simulate.flair import FLAIR_LABEL_SETS
from segrenorm.workflows.compare import translator_config
from segrenorm.workflows.pairs import find_pair_run, finished_pair_run, pair_config

TRANSLATORS = ("segrenorm", "s-cyclegan", "cyclegan")
DIRECTIONS = "SA:SV,SA:PI,SV:PI"
PRESET, FALLBACK = "msseg-cpu", ("cpu", ["data.n_classes=2"])
#: The printed columns, in order (a column no method has is left out).
FIGURES = (
    "SSIM", "PSNR", "SSIM clean", "PSNR clean", "KID ratio", "Dice lesion", "IoU lesion",
    "recovery", "removed", "hallucinated", "detected", "lesion Dice", "contrast", "inversions",
)  # fmt: skip
Trainer = Callable[..., Path]


@dataclass(frozen=True)
class Job:
    """One training run of the benchmark: a direction, a translator and a seed."""

    source: str
    target: str
    kind: str
    seed: int
    config: Config

    @property
    def method(self) -> str:
        """Its name in the direction's evaluation, e.g. ``segrenorm-s0``."""
        return f"{self.kind}-s{self.seed}"


def base_config(name: str, overrides: Sequence[str], say: Callable[[str], None] = print) -> Config:
    """The shared config: ``name`` (falling back from a missing ``msseg-cpu``) + overrides."""
    extra: list[str] = []
    if name == PRESET and name not in PRESETS:
        name, extra = FALLBACK[0], list(FALLBACK[1])
        say(f"note: no {PRESET} preset here; using {name} --set {' --set '.join(extra)}")
    return load_config(name, overrides=[*extra, *overrides])


def plan(
    config: Config,
    directions: Sequence[tuple[str, str]],
    kinds: Sequence[str],
    seeds: Sequence[int],
) -> list[Job]:
    """Every (direction, seed, translator) job, directions outermost, in the given orders."""
    jobs = []
    for source, target in directions:
        for seed in seeds:
            for kind in kinds:
                raw = translator_config(config, TranslatorKind(kind)).to_dict()
                raw["run"]["seed"] = int(seed)
                cfg = pair_config(config_from_dict(raw), source, target)
                jobs.append(Job(source, target, kind, int(seed), cfg))
    return jobs


def train_jobs(
    jobs: Sequence[Job],
    cache: Path,
    runs: Path,
    shard: tuple[int, int] = (0, 1),
    *,
    dry_run: bool = False,
    train: Trainer | None = None,
    say: Callable[[str], None] = print,
) -> dict[Job, Path | None]:
    """Reuse every finished job, resume or train this shard's others; ``None``: not done here.

    Job ``k`` belongs to shard ``k % N``; any shard reuses a job another one finished.
    """
    if train is None:
        from segrenorm.training.trainer import train as train_run

        train = train_run
    index, count = shard
    done: dict[Job, Path | None] = {}
    for number, job in enumerate(jobs):
        head = f"{job.source} -> {job.target} {job.method}:"
        finished = finished_pair_run(runs, job.config, cache)
        if finished is not None:
            say(f"{head} reusing {finished}")
            done[job] = finished
            continue
        done[job] = None
        if number % count != index:
            say(f"{head} left to shard {number % count}/{count}")
            continue
        found = find_pair_run(runs, job.config, cache)
        resume = None if found is None else found[0]
        if dry_run:
            say(f"{head} would " + ("train" if resume is None else f"resume {resume}"))
            continue
        say(f"{head} training" + ("" if resume is None else f", resuming {resume}"))
        done[job] = train(job.config, cache, runs, resume=resume, progress=False)
    return done


def _mean(value: Any) -> float | None:
    """A number, or the ``mean`` of a ``{"mean", ...}`` entry; None when absent or NaN."""
    if isinstance(value, dict):
        value = value.get("mean")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    return float(value)


def _lesion_index(results: dict[str, Any]) -> int:
    names = list(results.get("class_names", []))
    return names.index("lesion") if "lesion" in names else 1


def _lesion_entry(results: dict[str, Any]) -> dict[str, Any]:
    """The lesion lens's ``lesion`` class, from a results.json of either schema."""
    classes = lesion_results(results.get("lesions")).get("classes") or {}
    found = [entry for name, entry in classes.items() if str(name).lower() == "lesion"]
    return found[0] if found else {}  # any case, as the lens itself matches class names


def method_figures(results: dict[str, Any], method: str) -> dict[str, float]:
    """The headline numbers of one method of a direction's ``results.json``."""
    k = _lesion_index(results)
    paired = (results.get("paired") or {}).get("methods", {}).get(method) or {}
    clean = paired.get("clean") or {}
    dist = (results.get("distribution") or {}).get("methods", {}).get(method) or {}
    seg = results.get("segmentation") or {}
    row = seg.get("rows", {}).get(f"target→{method}") or {}
    dice, iou = (row.get(key, {}).get("mean") for key in ("dice", "iou"))
    recovery = seg.get("gap_recovery", {}).get(method)
    lesions = _lesion_entry(results)
    found = (lesions.get("detection") or {}).get("methods", {}).get(method) or {}
    contrast = (lesions.get("contrast") or {}).get("methods", {}).get(method) or {}
    values = {
        "SSIM": paired.get("ssim"), "PSNR": paired.get("psnr"),
        "SSIM clean": clean.get("ssim"), "PSNR clean": clean.get("psnr"),
        "KID ratio": dist.get("kid_ratio"),
        "Dice lesion": dice[k] if isinstance(dice, list) and len(dice) > k else None,
        "IoU lesion": iou[k] if isinstance(iou, list) and len(iou) > k else None,
        "recovery": recovery[k] if isinstance(recovery, list) and len(recovery) > k else None,
        "removed": found.get("fn"), "hallucinated": found.get("fp"), "detected": found.get("tp"),
        "lesion Dice": found.get("lesion_dice"), "contrast": contrast.get("ratio_mean"),
        "inversions": contrast.get("inversions"),
    }  # fmt: skip
    if isinstance(recovery, list):  # the tissue classes of a tissue+lesion set, by name
        names = list(results.get("class_names", []))
        for index, name in enumerate(names[1 : len(recovery)], start=1):
            if index != k:
                values[f"recovery {name}"] = recovery[index]
    return {key: v for key, value in values.items() if (v := _mean(value)) is not None}


def _label(method: str, seeds: Sequence[int]) -> str:
    """``segrenorm-s0 (wrong seg)`` -> ``segrenorm (wrong seg)``; other names as they are."""
    stem, sep, tail = method.rpartition("-s")
    for seed in seeds:
        rest = tail[len(str(seed)) :]
        if sep and stem and tail.startswith(str(seed)) and (not rest or rest.startswith(" ")):
            return stem + rest
    return method


def direction_table(results: dict[str, Any], seeds: Sequence[int]) -> dict[str, Any]:
    """One direction: per method label, each figure's mean, std (over seeds) and count."""
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
    rows, k = (results.get("segmentation") or {}).get("rows", {}), _lesion_index(results)
    reference = {}
    for name, row in (("target on source", "target→none"), ("source in-domain", "source→source")):
        dice = (rows.get(row) or {}).get("dice", {}).get("mean")
        if isinstance(dice, list) and len(dice) > k and _mean(dice[k]) is not None:
            reference[name] = float(dice[k])
    target = (_lesion_entry(results).get("contrast") or {}).get("target") or {}
    if _mean(target.get("ratio_mean")) is not None:
        reference["target contrast"] = float(target["ratio_mean"])
    return {"sites": results.get("sites"), "reference": reference, "methods": table}


def print_table(direction: str, entry: dict[str, Any], out: Callable[[str], None] = print) -> None:
    """The direction's table: a row per method, a column per figure any method has."""
    methods = entry["methods"]
    present = dict.fromkeys(key for row in methods.values() for key in row)  # in row order
    keys = []
    for key in FIGURES:  # the per-class recoveries follow the lesion's, in class order
        keys += [key] if key in present else []
        if key == "recovery":
            keys += [k for k in present if k.startswith("recovery ")]
    refs = ", ".join(f"{name} {value:.3f}" for name, value in entry["reference"].items())
    out(f"\n{direction}" + (f" (lesion Dice: {refs})" if refs else ""))
    texts = {label: [_cell(row.get(key)) for key in keys] for label, row in methods.items()}
    # A column is as wide as its widest cell or name plus one space, at least 18 (labels 26).
    widths = [max(17, len(k), *(len(t[i]) for t in texts.values())) + 1 for i, k in enumerate(keys)]
    first = max([26, *(len(label) + 1 for label in texts)])
    out(f"{'method':{first}s}" + "".join(f"{k:>{w}s}" for k, w in zip(keys, widths, strict=True)))
    for label, cells in texts.items():
        out(f"{label:{first}s}" + "".join(f"{t:>{w}s}" for t, w in zip(cells, widths, strict=True)))


def _cell(cell: dict[str, float] | None) -> str:
    """``mean`` to 4 decimals, with `` ± std`` over more than one seed; "" when absent."""
    if cell is None:
        return ""
    return f"{cell['mean']:.4f}" + (f" ± {cell['std']:.4f}" if cell["n"] > 1 else "")


def _data(args: argparse.Namespace, out: Path) -> Path:
    data = Path(args.data) if args.data else out / "data"
    if not (data / "subjects.csv").is_file():
        if args.data or args.dry_run:
            if args.data:
                sys.exit(f"flair: {data}/subjects.csv not found: give a simulate flair folder")
            print(f"would simulate flair into {data}")
            return data
        if args.shard != "0/1":
            sys.exit(f"flair: {data} is missing: run once with --prepare-only, then the shards")
        argv = ["simulate", "flair", "--out", str(data), "--resolution", str(args.resolution),
                "--labels", args.labels or "lesion"]  # fmt: skip
        if args.subjects_per_scanner is not None:
            argv += ["--subjects-per-scanner", str(args.subjects_per_scanner)]
        if cli(argv) != 0:
            sys.exit(f"flair: segrenorm {' '.join(argv)} failed (see above)")
    return data


def class_names(data: Path, labels: str | None) -> list[str]:
    """The classes of the data's label set (its ``simulation.json``), else of ``labels``.

    Exits naming both when the data folder holds another set than ``labels`` asks for.
    """
    record = data / "simulation.json"
    held = json.loads(record.read_text()).get("labels") if record.is_file() else None
    if isinstance(held, dict) and isinstance(held.get("class_names"), list):
        if labels is not None and held.get("set") != labels:
            sys.exit(f"flair: {data} holds the {held.get('set')!r} label set, not --labels "
                     f"{labels!r}: drop --labels, or simulate into another folder")  # fmt: skip
        return [str(name) for name in held["class_names"]]
    return list(FLAIR_LABEL_SETS[labels or "lesion"])


def _cache(args: argparse.Namespace, data: Path, out: Path, names: Sequence[str]) -> Path:
    cache = out / "cache"
    if (cache / "manifest.json").is_file():
        held = json.loads((cache / "manifest.json").read_text()).get("class_names")
        if held != list(names):
            sys.exit(f"flair: {cache} was prepared with classes {held}, not {list(names)}: "
                     "use another --out, or the label set it was made with")  # fmt: skip
        return cache
    if not args.dry_run:
        out.mkdir(parents=True, exist_ok=True)  # with --data nothing else has made it
    if args.dry_run:
        print(f"would prepare {cache} (grid of {args.grid})")
        return cache
    if args.shard != "0/1":
        sys.exit(f"flair: {cache} is missing: run once with --prepare-only, then the shards")
    argv = ["prepare", "--csv", str(data / "subjects.csv"), "--out", str(cache), "--target",
            args.grid, "--class-names", *names, "--bias-correction", args.bias_correction,
            "--headroom", str(args.headroom), "--quiet"]  # fmt: skip
    if cli(argv) != 0:
        sys.exit(f"flair: segrenorm {' '.join(argv)} failed (see above)")
    return cache


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise SystemExit(f"flair: --shard {text!r} is not I/N with 0 <= I < N, e.g. 0/2")
    return int(index), int(count)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (see the module docstring); returns 0."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--out", required=True, help="working folder")
    parser.add_argument("--data", help="a segrenorm simulate flair folder (default: simulate)")
    parser.add_argument("--resolution", type=int, choices=(1, 2), default=2)
    parser.add_argument("--subjects-per-scanner", type=int, help="simulate flair's (default 5)")
    labels_help = "simulate flair's label set (default: the data's, else lesion)"
    parser.add_argument("--labels", choices=tuple(FLAIR_LABEL_SETS), help=labels_help)
    parser.add_argument("--grid", default="SV", help="prepare --target: the grid's site")
    parser.add_argument("--bias-correction", default="n4", help="prepare --bias-correction")
    parser.add_argument("--headroom", type=float, default=1.0, help="prepare --headroom")
    parser.add_argument("--config", default=PRESET, help="preset or YAML")
    parser.add_argument("--set", action="append", default=[], dest="overrides")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--translators", nargs="+", default=list(TRANSLATORS))
    parser.add_argument("--directions", default=DIRECTIONS, help="SRC:TGT,... pairs")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--baselines", nargs="*", help="classical pipelines (default: all)")
    parser.add_argument("--eval-set", action="append", default=[], dest="eval_overrides")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    parser.add_argument("--prepare-only", action="store_true", help="simulate and prepare only")
    parser.add_argument("--train-only", action="store_true", help="no evaluation")
    parser.add_argument("--shard", default="0/1", help="I/N: train every N-th job from I")
    args = parser.parse_args(argv)
    args.command = ["benchmarks/flair.py", *(sys.argv[1:] if argv is None else argv)]
    shard, out = _shard(args.shard), Path(args.out)
    if shard[1] > 1 and not args.train_only:
        sys.exit("flair: --shard trains only: add --train-only, then evaluate in one process")
    directions = parse_pairs(args.directions)
    data = _data(args, out)
    names = class_names(data, args.labels)
    config = base_config(args.config, [f"data.n_classes={len(names)}", *args.overrides])
    cache = _cache(args, data, out, names)
    if args.prepare_only:
        return 0
    if (cache / "manifest.json").is_file():
        from segrenorm.workflows.pairs import resolve_pairs

        directions = resolve_pairs(config, cache, directions)
    jobs = plan(config, directions, args.translators, args.seeds)
    done = train_jobs(jobs, cache, out / "runs", shard, dry_run=args.dry_run)
    if args.dry_run or args.train_only:
        return 0
    return evaluate_directions(args, cache, out, directions, done)


def evaluate_directions(
    args: argparse.Namespace,
    cache: Path,
    out: Path,
    directions: Sequence[tuple[str, str]],
    done: dict[Job, Path | None],
) -> int:
    """One evaluate per direction; the tables printed and written to ``OUT/flair.json``."""
    from segrenorm.config.overrides import apply_overrides
    from segrenorm.evaluate.methods import BASELINES
    from segrenorm.evaluate.suite import EvaluationConfig
    from segrenorm.workflows.evaluate import evaluate_cache

    summary: dict[str, Any] = {"seeds": args.seeds, "command": args.command,
                               "config": args.config, "overrides": args.overrides,
                               "directions": {}}  # fmt: skip
    for source, target in directions:
        runs = {j.method: p for j, p in done.items() if (j.source, j.target) == (source, target)}
        missing = [name for name, path in runs.items() if path is None]
        if missing:
            sys.exit(f"flair: {source} -> {target} lacks finished runs {missing}: train them")
        report = out / f"report-{source}-to-{target}-{args.split}"
        _, results = evaluate_cache(
            cache, report, models={k: p for k, p in runs.items() if p is not None},
            baselines=BASELINES if args.baselines is None else args.baselines,
            config=apply_overrides(EvaluationConfig(), args.eval_overrides), split=args.split,
            title=f"FLAIR benchmark {source} -> {target}, {args.split} split",
            segmentors=out / "segmentors",  # shared by the directions and the splits
        )  # fmt: skip
        entry = {**direction_table(results, args.seeds), "report": str(report)}
        summary["directions"][f"{source}->{target}"] = entry
        print_table(f"{source} -> {target}", entry)
    record = out / "flair.json"
    previous = json.loads(record.read_text()) if record.is_file() else {}
    write_json_atomic(record, {**previous, args.split: summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
