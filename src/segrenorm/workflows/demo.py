"""The one-command demo: simulate -> prepare -> train -> harmonize -> evaluate -> report.

Every stage writes a folder a user can inspect, and a stage whose output already exists
and is complete is reused, so an interrupted demo picks up where it stopped:

```
OUT/data/                      segrenorm simulate t1 (2 mm, 20 virtual subjects)
OUT/cache/                     segrenorm prepare (slice cache)
OUT/runs/NNNNN-cpu-segrenorm/  segrenorm train (the cpu preset by default)
OUT/harmonized/segrenorm/      segrenorm harmonize of the held-out source scans
OUT/report/                    segrenorm evaluate: report.html, report.md, results.json/csv
```

The evaluation runs with the small budgets of :data:`DEMO_EVALUATION` so the whole demo
fits in 11.5 to 17 minutes on 2 CPU cores (measured, BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from segrenorm.config.load import load_config
from segrenorm.config.schema import Config
from segrenorm.data.listing import read_listing
from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slice_cache import SliceCache
from segrenorm.errors import CacheError, SegrenormError
from segrenorm.evaluate.features import AutoencoderConfig
from segrenorm.evaluate.methods import BASELINES
from segrenorm.evaluate.segmentors import SegmentorConfig
from segrenorm.evaluate.suite import EvaluationConfig
from segrenorm.report.checks import check_lines
from segrenorm.report.write import ReportPaths
from segrenorm.simulate.anatomy import LABEL_NAMES
from segrenorm.simulate.benchmark import simulate_t1
from segrenorm.vocabulary import source_site

__all__ = ["DEMO_EVALUATION", "DemoResult", "headline", "run_demo"]

log = logging.getLogger(__name__)

#: Evaluation budgets of the demo (about two minutes on 2 CPU cores).
DEMO_EVALUATION = EvaluationConfig(
    autoencoder=AutoencoderConfig(),
    segmentor=SegmentorConfig(),
    robustness_slices=96,
)


@dataclass(frozen=True)
class DemoResult:
    """Where the demo wrote its outputs, and its numbers.

    Args:
        out: the demo folder.
        run_dir: the training run.
        report: the report's files.
        results: the evaluation's numbers.
        seconds: wall time per stage.
    """

    out: Path
    run_dir: Path
    report: ReportPaths
    results: dict[str, Any]
    seconds: dict[str, float]


def _simulated(data: Path, seed: int, subjects: int, scanners: tuple[str, str]) -> Path:
    csv = data / "subjects.csv"
    if (data / "simulation.json").is_file() and csv.is_file():
        log.info("reusing simulated data in %s", data)
        return csv
    return simulate_t1(
        data, n_subjects=subjects, resolution=2, seed=seed, overwrite=data.exists(),
        source=scanners[0], target=scanners[1],
    )  # fmt: skip


def _name(scanner: str) -> str:
    """A scanner's display name: a built-in name as it is, a profile file by its stem."""
    return Path(scanner).stem if scanner.endswith((".yaml", ".yml", ".json")) else scanner


def _prepared(csv: Path, cache_dir: Path, seed: int) -> SliceCache:
    try:
        cache = SliceCache.open(cache_dir)
        log.info("reusing slice cache %s", cache_dir)
        return cache
    except CacheError:
        pass
    names = [LABEL_NAMES[k] for k in sorted(LABEL_NAMES)]
    path = prepare_cache(
        read_listing(csv), cache_dir, seed=seed, class_names=names,
        overwrite=cache_dir.exists(), progress=False,
    )  # fmt: skip
    return SliceCache.open(path)


def _trained(config: Config, cache: SliceCache, runs: Path, say: Callable[[str], None]) -> Path:
    """The finished run of ``config`` in ``runs``, training it (or resuming it) if needed."""
    from segrenorm.training.runlog import list_runs
    from segrenorm.training.trainer import StepInfo, train

    # Only the newest run counts: an older finished one may have other settings.
    found = list_runs(runs, config.name, config.model.translator.value)
    if found and (found[-1] / "final.pt").is_file():
        say(f"reusing finished run {found[-1]}")
        return found[-1]
    resume = found[-1] if found and (found[-1] / "checkpoints" / "last.pt").is_file() else None
    total = config.optim.total_iterations
    every = max(1, total // 10)
    started = time.perf_counter()

    first: list[int] = []

    def report(info: StepInfo) -> None:
        if not first:
            first.append(info.step - 1)  # the step this invocation started from
        if info.step % every and info.step != total:
            return
        spent = time.perf_counter() - started
        left = spent / max(info.step - first[0], 1) * (total - info.step)
        say(f"train: step {info.step}/{total}, {spent:.0f} s so far, about {left:.0f} s left")

    if resume is not None:
        say(f"resuming {resume}")
    return train(config, cache.path, runs, resume=resume, progress=False, callbacks=[report])


def _harmonized(
    run_dir: Path, cache: SliceCache, site: str, out: Path, say: Callable[[str], None]
) -> Path:
    """Harmonize the held-out scans of ``site`` with the run, as ``segrenorm harmonize`` does."""
    from segrenorm.harmonize.files import harmonize_files
    from segrenorm.harmonize.harmonizer import Harmonizer

    subjects = cache.manifest["subjects"]
    tests = [s["image"] for s in subjects if s["site"] == site and s["split"] == "test"]
    harmonizer = Harmonizer.load(run_dir)
    results = harmonize_files(harmonizer, tests, out, skip_existing=True)
    failed = [r for r in results if r.status == "failed"]
    if failed:
        raise SegrenormError(f"harmonizing {failed[0].input} failed: {failed[0].message}")
    say(f"harmonized {len(results)} held-out scans of site {site} into {out}")
    return out


def headline(results: dict[str, Any]) -> str:
    """The demo's headline numbers as a few lines of text.

    Args:
        results: the evaluation's numbers.
    """
    lines = []
    paired = results.get("paired")
    if paired:
        lines.append("paired ground truth (held-out subjects, inside the brain):")
        lines.append(f"  {'method':20s} {'SSIM':>7s} {'PSNR':>7s} {'MAE':>7s}")
        for name, s in paired["methods"].items():
            lines.append(f"  {name:20s} {s['ssim']:7.4f} {s['psnr']:7.2f} {s['mae']:7.4f}")
    dist = results.get("distribution")
    if dist:
        kid = ", ".join(
            f"{k} {v['kid_ratio']:.2f}" for k, v in dist["methods"].items() if k != "none"
        )
        lines.append(f"KID / source-vs-target KID: {kid}")
    lines += check_lines(results)
    return "\n".join(lines)


def run_demo(
    out: str | Path,
    *,
    config: Config | None = None,
    evaluation: EvaluationConfig | None = None,
    seed: int = 0,
    subjects: int = 20,
    source: str = "1.5T",
    target: str = "3T",
    on_stage: Callable[[str], None] | None = None,
) -> DemoResult:
    """Run the whole demo into ``out`` and return its numbers.

    Args:
        out: the demo folder (created; existing complete stages are reused).
        config: the training config; the ``cpu`` preset by default.
        evaluation: the evaluation budgets; :data:`DEMO_EVALUATION` by default.
        seed: seeds the simulation, the split, training and evaluation.
        subjects: virtual subjects simulated (30% test and 15% validation subjects held out
            on both scanners).
        source: the source scanner: a built-in name (``1.5T``, ``3T``, ``1T``, ``7T``) or a
            profile file.
        target: the target scanner, as ``source``.
        on_stage: progress callback (one line per stage and per tenth of training).
    """
    from segrenorm.workflows.evaluate import evaluate_cache

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    config = config or load_config("cpu")
    config = replace(config, run=replace(config.run, seed=seed))
    evaluation = (evaluation or DEMO_EVALUATION).with_seed(seed)
    say = on_stage or (lambda text: log.info("%s", text))
    seconds: dict[str, float] = {}

    def timed(stage: str, text: str, fn: Callable[[], Any]) -> Any:
        say(text)
        start = time.perf_counter()
        value = fn()
        seconds[stage] = time.perf_counter() - start
        return value

    csv = timed("simulate", f"simulating {subjects} subjects on two scanners (2 mm)",
                lambda: _simulated(root / "data", seed, subjects, (source, target)))  # fmt: skip
    cache = timed(
        "prepare", "preparing the slice cache", lambda: _prepared(csv, root / "cache", seed)
    )
    run_dir = timed("train", f"training {config.model.translator.value} ({config.name} preset)",
                    lambda: _trained(config, cache, root / "runs", say))  # fmt: skip
    name, source = config.model.translator.value, source_site(config.data.direction)
    folder = root / "harmonized" / name
    timed("harmonize", "harmonizing the held-out source scans",
          lambda: _harmonized(run_dir, cache, source, folder, say))  # fmt: skip
    title = f"segrenorm demo: {_name(source)} -> {_name(target)} (2 mm)"
    paths, results = timed(
        "evaluate",
        "evaluating against the classical baselines",
        lambda: evaluate_cache(
            cache.path, root / "report", models={name: run_dir}, harmonized={name: folder},
            baselines=BASELINES, config=evaluation, title=title,
            on_stage=lambda text: say(f"evaluate: {text}"), extra={"demo_seconds": seconds},
        ),
    )  # fmt: skip
    return DemoResult(root, run_dir, paths, results, seconds)
