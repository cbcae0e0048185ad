"""Tests for ``benchmarks/oct.py``: the job plan and its shards (with a stand-in trainer), the
command plan of a dry run, the step guards, and the tables from a hand-written
``results.json`` (recovery, fluid pockets and background artefacts computed by hand)."""

from __future__ import annotations

import importlib.util
import json
import math
import shlex
import statistics
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from segrenorm.config.load import load_config
from segrenorm.config.presets import PRESETS
from segrenorm.config.schema import Config
from segrenorm.models.checkpoint import FORMAT_VERSION, REQUIRED_KEYS

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ("background", "IRF", "SRF", "PED")


def load_oct() -> ModuleType:
    spec = importlib.util.spec_from_file_location("oct_benchmark", ROOT / "benchmarks/oct.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


oct_bench = load_oct()


def finished_run(
    out: Path, config: Config, cache: Path, step: int, resume: Path | None = None
) -> Path:
    """A run folder ``find_pair_run`` accepts (``resume``'s, or a new one): its record and a
    checkpoint at ``step``."""
    run = resume or out / f"{len(list(out.glob('*'))) if out.is_dir() else 0:05d}-fake"
    (run / "checkpoints").mkdir(parents=True, exist_ok=True)
    record = {"config": config.to_dict(), "cache": str(cache.resolve())}
    (run / "config.json").write_text(json.dumps(record))
    payload: dict[str, Any] = {key: {} for key in REQUIRED_KEYS}
    payload.update(format_version=FORMAT_VERSION, step=step)
    torch.save(payload, run / "checkpoints" / "last.pt")
    if step >= config.optim.total_iterations:
        torch.save(payload, run / "final.pt")
    return run


def small_config() -> Config:
    return load_config("cpu", overrides=["data.n_classes=4", "optim.iterations=3",
                                         "optim.decay_iterations=0"])  # fmt: skip


def test_plan_runs_every_translator_and_seed_from_the_first_vendor_to_the_last() -> None:
    jobs = oct_bench.plan(small_config(), [("Cirrus", "Spectralis")], oct_bench.TRANSLATORS,
                          [0, 2])  # fmt: skip
    assert [j.method for j in jobs] == [
        "segrenorm-s0", "s-cyclegan-s0", "semgan-s0", "cyclegan-s0",
        "segrenorm-s2", "s-cyclegan-s2", "semgan-s2", "cyclegan-s2",
    ]  # fmt: skip
    for job in jobs:
        assert (job.config.data.source, job.config.data.target) == ("Cirrus", "Spectralis")
        assert job.config.run.seed == job.seed and job.config.data.n_classes == 4
        # SemGAN is not left out on fluid masks: it runs with its semantic dropout.
        assert (job.config.data.semantic_dropout > 0) == (job.kind == "semgan")


def test_base_config_falls_back_to_cpu_with_the_retouch_classes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    said: list[str] = []
    monkeypatch.delitem(PRESETS, "retouch-cpu", raising=False)
    config = oct_bench.base_config("retouch-cpu", ["optim.iterations=5"], said.append)
    assert config.name == "cpu" and config.data.n_classes == 4
    assert config.loss.class_weights == (0.3, 0.7) and config.optim.iterations == 5
    assert said == ["note: no retouch-cpu preset here; using cpu --set data.n_classes=4 "
                    "--set loss.class_weights=[0.3, 0.7]"]  # fmt: skip
    monkeypatch.setitem(PRESETS, "retouch-cpu", load_config("retouch"))
    assert oct_bench.base_config("retouch-cpu", [], said.append).name == "retouch"
    assert len(said) == 1


def test_shards_train_every_other_job_and_reuse_each_others_runs(tmp_path: Path) -> None:
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    cache.mkdir()
    jobs = oct_bench.plan(small_config(), [("Cirrus", "Spectralis")], oct_bench.TRANSLATORS, [0])
    trained: list[tuple[str, Path | None]] = []

    def train(config: Config, cache: Path, out: Path, *, resume: Path | None,
              progress: bool) -> Path:  # fmt: skip
        trained.append((config.model.translator.value, resume))
        return finished_run(out, config, cache, config.optim.total_iterations, resume)

    stopped = finished_run(runs, jobs[3].config, cache, 1)  # cyclegan stopped at step 1
    said: list[str] = []
    done = oct_bench.train_jobs(jobs, cache, runs, (1, 2), train=train, say=said.append)
    assert trained == [("s-cyclegan", None), ("cyclegan", stopped)]
    assert [done[j] is None for j in jobs] == [True, False, True, False]
    assert said[0] == "Cirrus -> Spectralis segrenorm-s0: left to shard 0/2"
    trained.clear()
    done = oct_bench.train_jobs(jobs, cache, runs, (0, 2), train=train, say=said.append)
    assert trained == [("segrenorm", None), ("semgan", None)]
    assert all(done[j] is not None for j in jobs) and done[jobs[3]] == stopped
    assert "Cirrus -> Spectralis s-cyclegan-s0: reusing" in " ".join(said)


def test_dry_run_prints_the_commands_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    called: list[list[str]] = []

    def cli(argv: list[str]) -> int:
        called.append(argv)
        return 0

    monkeypatch.setattr(oct_bench, "cli", cli)
    out = tmp_path / "bench"
    argv = [
        "--out",
        str(out),
        "--config",
        "cpu",
        "--set",
        "data.n_classes=4",
        "--translators",
        "segrenorm",
        "semgan",
        "--seeds",
        "0",
        "1",
        "--split",
        "test",
    ]
    assert oct_bench.main([*argv, "--dry-run"]) == 0
    assert called == [] and not out.exists()
    lines = capsys.readouterr().out.splitlines()
    data, cache = out / "data", out / "cache"
    assert lines == [
        "would simulate: segrenorm " + shlex.join(
            ["simulate", "oct", "--out", str(data), "--scale", "0.5", "--subjects-per-vendor",
             "24", "--vendors", "Cirrus", "Spectralis"]),
        "would prepare: segrenorm " + shlex.join(
            ["prepare", "--csv", str(data / "subjects.csv"), "--out", str(cache), "--modality",
             "oct", "--target", "Spectralis", "--class-names", "background", "IRF", "SRF",
             "PED", "--bias-correction", "none", "--quiet"]),
        "Cirrus -> Spectralis segrenorm-s0: would train",
        "Cirrus -> Spectralis semgan-s0: would train",
        "Cirrus -> Spectralis segrenorm-s1: would train",
        "Cirrus -> Spectralis semgan-s1: would train",
        f"would evaluate on the test split into {out / 'report-test'}",
    ]  # fmt: skip
    # With the data there, only the cache is still to make; other vendors set both steps.
    data.mkdir(parents=True)
    (data / "subjects.csv").write_text("subject,site,image,label,split\n")
    more = [*argv, "--vendors", "Topcon", "Cirrus", "Spectralis", "--scale", "0.5"]
    assert oct_bench.main([*more, "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("would prepare: ") and "--target Spectralis" in lines[0]
    assert lines[1] == "Topcon -> Spectralis segrenorm-s0: would train"
    assert called == []


def test_guards_name_the_option_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(oct_bench, "cli", lambda argv: pytest.fail(f"ran {argv}"))
    base = ["--out", str(tmp_path / "o"), "--config", "cpu", "--set", "data.n_classes=4"]
    with pytest.raises(SystemExit, match="--shard trains only: add --train-only"):
        oct_bench.main([*base, "--shard", "0/2"])
    with pytest.raises(SystemExit, match=r"--shard '3/2' is not I/N with 0 <= I < N"):
        oct_bench.main([*base, "--train-only", "--shard", "3/2"])
    with pytest.raises(SystemExit, match="--vendors Cirrus names one vendor: give the source"):
        oct_bench.main([*base, "--vendors", "Cirrus"])
    with pytest.raises(SystemExit, match="data is missing: run once with --prepare-only"):
        oct_bench.main([*base, "--train-only", "--shard", "1/2"])
    with pytest.raises(SystemExit, match=r"nowhere/subjects.csv not found: give a segrenorm "):
        oct_bench.main([*base, "--data", str(tmp_path / "nowhere"), "--dry-run"])
    data = tmp_path / "o" / "data"
    data.mkdir(parents=True)
    (data / "subjects.csv").write_text("subject,site,image\n")
    with pytest.raises(SystemExit, match="cache is missing: run once with --prepare-only"):
        oct_bench.main([*base, "--train-only", "--shard", "1/2"])
    monkeypatch.setattr(oct_bench, "cli", lambda argv: 2)
    with pytest.raises(SystemExit, match=r"oct: segrenorm prepare --csv .* failed"):
        oct_bench.main(base)


#: Per method: Dice of IRF, SRF, PED; the learned ones by training seed.
DICE = {
    "none": (0.63, 0.50, 0.34), "histogram": (0.64, 0.52, 0.40),
    "segrenorm-s0": (0.69, 0.60, 0.52), "segrenorm-s1": (0.67, 0.56, 0.50),
    "cyclegan-s0": (0.62, 0.55, 0.44),
}  # fmt: skip
UPPER = (0.71, 0.62, 0.55)  # source in-domain


def hand_results(*, recovery: bool = True) -> dict[str, Any]:
    """An OCT results.json, by hand: per-class rows, three fluid pocket classes, artefacts."""
    rows: dict[str, Any] = {
        f"target→{m}": {"dice": {"mean": [0.99, *d]}, "iou": {"mean": [0.98, *(x / (2 - x)
                        for x in d)]}, "generalized_dice": {"mean": sum(d) / 3}}
        for m, d in DICE.items()
    }  # fmt: skip
    rows["source→source"] = {"dice": {"mean": [0.99, *UPPER]}}
    lower = DICE["none"]
    seg: dict[str, Any] = {"rows": rows}
    if recovery:  # the lens's own figure: here 0.1 off the ratio of means, to tell them apart
        seg["gap_recovery"] = {m: [None, *((x - lo) / (up - lo) + 0.1 for x, lo, up in
                                           zip(d, lower, UPPER, strict=True))]
                               for m, d in DICE.items()}  # fmt: skip
    pockets = {}
    for k, name in enumerate(("IRF", "SRF", "PED")):
        methods = {
            m: {
                "tp": {"mean": 10.0},
                "fn": {"mean": 5.0 - 4 * d[k]},
                "fp": {"mean": float(k), "seed_std": None},
            }
            for m, d in DICE.items()
        }
        pockets[name] = {"class_name": name, "detection": {"methods": methods}}  # fmt: skip
    energy = {"none": 2.0, "histogram": 2.4, "segrenorm-s0": 1.0, "segrenorm-s1": 1.4,
              "cyclegan-s0": 3.0}  # fmt: skip
    artefacts = {m: {"total_mean": e, "total_ratio": e / 1.6, "row_mean": 0.0}
                 for m, e in energy.items()}  # fmt: skip
    return {
        "sites": {"source": "Cirrus", "target": "Spectralis"},
        "class_names": ["background", "IRF", "SRF", "PED"],
        "methods": {m: "run" if "-s" in m else "baseline" for m in DICE},
        "paired": {"methods": {m: {"ssim": 0.5 + d[0], "psnr": 20.0 + 10 * d[2],
                                   "clean": {"ssim": 0.6 + d[0]}} for m, d in DICE.items()}},
        "distribution": {"methods": {m: {"kid_ratio": 2 * d[1]} for m, d in DICE.items()}},
        "segmentation": seg,
        "lesions": {"classes": pockets},
        "artefacts": {"target": {"total_mean": 1.6}, "methods": artefacts},
    }  # fmt: skip


def test_direction_table_from_a_hand_written_results_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = oct_bench.direction_table(hand_results(), [0, 1])
    assert table["classes"] == ["IRF", "SRF", "PED"]
    assert table["reference"] == {
        "IRF": {"target on source": 0.63, "source in-domain": 0.71},
        "SRF": {"target on source": 0.50, "source in-domain": 0.62},
        "PED": {"target on source": 0.34, "source in-domain": 0.55},
        "artefacts": {"target": 1.6},
    }
    methods = table["methods"]
    assert list(methods) == ["none", "histogram", "segrenorm", "cyclegan"]
    seg = methods["segrenorm"]
    assert seg["Dice PED"]["mean"] == pytest.approx(0.51) and seg["Dice PED"]["n"] == 2
    assert seg["Dice PED"]["std"] == pytest.approx(statistics.stdev([0.52, 0.50]))
    assert seg["IoU IRF"]["mean"] == pytest.approx((0.69 / 1.31 + 0.67 / 1.33) / 2)
    # The lens's per-seed recovery is taken as given: (0.51 - 0.34) / 0.21 + 0.1.
    assert seg["recovery PED"]["mean"] == pytest.approx(0.17 / 0.21 + 0.1)
    assert seg["recovery IRF"]["mean"] == pytest.approx(0.05 / 0.08 + 0.1)
    assert seg["GDice"]["mean"] == pytest.approx((1.81 / 3 + 1.73 / 3) / 2)
    assert seg["removed SRF"]["mean"] == pytest.approx(5.0 - 4 * 0.58)
    assert seg["hallucinated PED"] == {"mean": 2.0, "std": 0.0, "n": 2}
    assert seg["detected IRF"]["mean"] == 10.0
    # The total (row + column) energy and its ratio to the target's own, averaged over seeds.
    assert seg["artefacts"]["mean"] == pytest.approx(1.2)
    assert seg["artefact ratio"]["mean"] == pytest.approx((1.0 / 1.6 + 1.4 / 1.6) / 2)
    assert methods["cyclegan"]["artefact ratio"]["mean"] == pytest.approx(3.0 / 1.6)
    assert seg["SSIM clean"]["mean"] == pytest.approx(1.28) and "PSNR clean" not in seg
    assert methods["none"]["recovery SRF"]["mean"] == pytest.approx(0.1)
    oct_bench.print_table("Cirrus -> Spectralis", table)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "Cirrus -> Spectralis: images (background artefacts: target 1.6)"
    assert lines[2].split() == ["method", "SSIM", "PSNR", "SSIM", "clean", "KID", "ratio",
                                "GDice", "artefacts", "artefact", "ratio"]  # fmt: skip
    heads = [line for line in lines if line.startswith("Cirrus -> Spectralis: ")]
    assert heads[1:] == [
        "Cirrus -> Spectralis: IRF (Dice: target on source 0.630, source in-domain 0.710)",
        "Cirrus -> Spectralis: SRF (Dice: target on source 0.500, source in-domain 0.620)",
        "Cirrus -> Spectralis: PED (Dice: target on source 0.340, source in-domain 0.550)",
    ]
    ped = lines[lines.index(heads[3]) :]
    assert ped[1].split() == ["method", "Dice", "IoU", "recovery", "removed", "hallucinated",
                              "detected"]  # fmt: skip
    row = next(line for line in ped if line.startswith("segrenorm "))
    assert row.split()[:4] == ["segrenorm", "0.5100", "±", "0.0141"]


def test_recovery_from_the_rows_when_the_lens_gives_none() -> None:
    results = hand_results(recovery=False)
    table = oct_bench.direction_table(results, [0, 1])["methods"]
    # (mean Dice - target on source) / (source in-domain - target on source), by hand.
    assert table["segrenorm"]["recovery IRF"]["mean"] == pytest.approx(
        ((0.69 - 0.63) / 0.08 + (0.67 - 0.63) / 0.08) / 2
    )
    assert table["cyclegan"]["recovery IRF"]["mean"] == pytest.approx(-0.01 / 0.08)
    assert table["histogram"]["recovery PED"]["mean"] == pytest.approx(0.06 / 0.21)
    assert table["none"]["recovery SRF"]["mean"] == 0.0
    # No gap (in-domain no better than target on source): no recovery, not a division by 0.
    results["segmentation"]["rows"]["source→source"]["dice"]["mean"][2] = 0.5
    assert "recovery SRF" not in oct_bench.method_figures(results, "histogram")
    # The lens's NaN means no gap either: it is not recomputed from the rows.
    results = hand_results()
    results["segmentation"]["gap_recovery"]["histogram"][3] = math.nan
    assert "recovery PED" not in oct_bench.method_figures(results, "histogram")


@pytest.mark.parametrize("layout", ["classes", "single"])
def test_pocket_counts_per_class_and_from_the_single_class_lens(layout: str) -> None:
    results = hand_results()
    if layout == "single":  # the schema written before fluid: one class, at the top
        results["lesions"] = {"class_name": "SRF", "class_index": 2,
                              **results["lesions"]["classes"]["SRF"]}  # fmt: skip
    figures = oct_bench.method_figures(results, "cyclegan-s0")
    assert figures["removed SRF"] == pytest.approx(5.0 - 4 * 0.55)
    assert figures["hallucinated SRF"] == 1.0 and figures["detected SRF"] == 10.0
    assert ("removed PED" in figures) == (layout == "classes")
    if layout == "classes":
        assert figures["hallucinated PED"] == 2.0 and figures["removed IRF"] == pytest.approx(
            5.0 - 4 * 0.62
        )


def test_no_artefacts_lesions_or_paired_truth_leave_those_columns_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = hand_results()
    results["artefacts"]["methods"]["histogram"]["total_ratio"] = math.nan  # a target without
    assert "artefact ratio" not in oct_bench.method_figures(results, "histogram")  # background
    del results["artefacts"], results["lesions"], results["paired"]
    table = oct_bench.direction_table(results, [0, 1])
    assert set(table["reference"]) == {"IRF", "SRF", "PED"}
    assert not any(k.startswith(("artefact", "removed", "SSIM")) for k in
                   table["methods"]["segrenorm"])  # fmt: skip
    oct_bench.print_table("C -> S", table)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "C -> S: images"
    assert lines[2].split() == ["method", "KID", "ratio", "GDice"]
    assert lines[lines.index(next(x for x in lines if x.startswith("C -> S: IRF"))) + 1].split() \
        == ["method", "Dice", "IoU", "recovery"]  # fmt: skip


def stub_listing(root: Path) -> None:
    """What ``simulate oct`` writes, in miniature: two vendors, a bright band with three
    fluid pockets, speckle, and held-out subjects on both vendors with clean renders."""
    from segrenorm.volumes.images import Geometry
    from segrenorm.volumes.readwrite import save_image, save_label

    shape = (32, 48, 6)  # (A-scans, depth, B-scans)
    geometry = Geometry.from_affine(np.diag([0.04, 0.016, 0.4, 1.0]), shape)
    lines = ["subject,site,image,label,split,clean"]
    for s, (site, gain) in enumerate((("Cirrus", 1.0), ("Spectralis", 1.5))):
        for k, split in enumerate(("train", "train", "train", "test")):
            rng = np.random.default_rng([s, k])
            clean = np.full(shape, 5.0)
            clean[:, 12:30] = 80.0 * gain
            labels = np.zeros(shape, np.uint8)
            x = int(rng.integers(8, 24))
            labels[x - 3 : x + 3, 15:19, 1:4] = 1
            labels[x - 4 : x + 4, 24:27, 2:5] = 2
            labels[4:9, 28:30, 1:3] = 3
            clean[labels > 0] = 10.0
            name = f"{site}-{k}" if split == "train" else f"held-{k}"
            folder = root / "images" / site
            image = save_image((clean * rng.gamma(4, 0.25, shape)).astype(np.float32),
                               folder / f"{name}_oct.nii.gz", geometry=geometry)  # fmt: skip
            label = save_label(labels, root / "labels" / site / f"{name}_fluid.nii.gz",
                               geometry=geometry)  # fmt: skip
            truth = "" if split == "train" else save_image(
                clean.astype(np.float32), root / "images" / f"{site}-clean" / f"{name}_oct.nii.gz",
                geometry=geometry)  # fmt: skip
            lines.append(f"{name},{site},{image},{label},{split},{truth}")
    (root / "subjects.csv").write_text("\n".join(lines) + "\n")


def test_main_prepares_trains_and_evaluates_an_oct_listing(
    tmp_path: Path, tiny_kit: SimpleNamespace, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from segrenorm.cli import main as real_cli

    def cli(argv: list[str]) -> int:
        if argv[:2] == ["simulate", "oct"]:  # H2's command, stood in for by the stub
            stub_listing(Path(argv[argv.index("--out") + 1]))
            return 0
        return real_cli(argv)

    monkeypatch.setattr(oct_bench, "cli", cli)
    out = tmp_path / "bench"
    tiny = [s for s in tiny_kit.train_set if "crop_size" not in s]
    sets = ["data.n_classes=4", "optim.iterations=1", "optim.decay_iterations=0",
            "data.crop_size=0", *tiny]  # fmt: skip
    argv = ["--out", str(out), "--config", "cpu", *tiny_kit.flags("--set", sets),
            "--translators", "segrenorm", "--split", "test", "--baselines", "histogram",
            *tiny_kit.flags("--eval-set", [*tiny_kit.eval_set, "segmentor_seeds=1",
                                            "sigmas=[0, 0.5]"])]  # fmt: skip
    torch.set_num_threads(1)
    assert oct_bench.main(argv) == 0
    manifest = json.loads((out / "cache" / "manifest.json").read_text())
    assert manifest["modality"] == "oct" and manifest["class_names"] == list(CLASSES)
    results = json.loads((out / "report-test" / "results.json").read_text())
    entry = json.loads((out / "oct.json").read_text())["test"]
    assert entry["direction"] == "Cirrus->Spectralis" and entry["classes"] == ["IRF", "SRF", "PED"]
    seg = entry["methods"]["segrenorm"]
    # The table carries the lenses' own numbers.
    assert seg["SSIM"]["mean"] == results["paired"]["methods"]["segrenorm-s0"]["ssim"]
    pockets = results["lesions"]["classes"]["PED"]["detection"]["methods"]["segrenorm-s0"]
    assert seg["hallucinated PED"]["mean"] == pockets["fp"]["mean"]
    energy = results["artefacts"]["methods"]["none"]["total_mean"]
    assert entry["methods"]["none"]["artefacts"]["mean"] == energy
    assert entry["reference"]["artefacts"]["target"] == results["artefacts"]["target"]["total_mean"]
    printed = capsys.readouterr().out
    assert "\nCirrus -> Spectralis: images" in printed and "\nCirrus -> Spectralis: PED" in printed
