"""Tests for ``benchmarks/flair.py``: the job plan, reuse and sharding (with a stand-in
trainer), the tables from a hand-written ``results.json``, and one tiny run end to end on a
stub ``simulate flair`` listing."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
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


def load_flair() -> ModuleType:
    spec = importlib.util.spec_from_file_location("flair_benchmark", ROOT / "benchmarks/flair.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


flair = load_flair()


class FakeTrainer:
    """Stands in for ``segrenorm.training.trainer.train``: a run folder with the record and
    the checkpoint ``find_pair_run`` reads, at the last step."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, int, Path | None]] = []

    def __call__(self, config: Config, cache: Path, out: Path, *, resume: Path | None,
                 progress: bool) -> Path:  # fmt: skip
        data = config.data
        self.calls.append((str(data.source), str(data.target), config.model.translator.value,
                           config.run.seed, resume))  # fmt: skip
        return fake_run(out, config, cache, config.optim.total_iterations, resume=resume)


def fake_run(out: Path, config: Config, cache: Path, step: int, resume: Path | None = None) -> Path:
    run = resume or out / f"{len(list(out.glob('*'))) if out.is_dir() else 0:05d}-fake"
    run.mkdir(parents=True, exist_ok=True)
    record = {"config": config.to_dict(), "cache": str(Path(cache).resolve())}
    (run / "config.json").write_text(json.dumps(record))
    payload: dict[str, Any] = {key: {} for key in REQUIRED_KEYS}
    payload.update(format_version=FORMAT_VERSION, step=step)
    (run / "checkpoints").mkdir(exist_ok=True)
    torch.save(payload, run / "checkpoints" / "last.pt")
    if step >= config.optim.total_iterations:
        torch.save(payload, run / "final.pt")
    return run


def test_plan_sets_each_jobs_pair_translator_and_seed() -> None:
    config = load_config("cpu", overrides=["data.n_classes=2", "optim.iterations=7"])
    jobs = flair.plan(config, [("SA", "SV"), ("SV", "PI")], ["segrenorm", "cyclegan"], [0, 3])
    assert [(j.source, j.target, j.method) for j in jobs] == [
        ("SA", "SV", "segrenorm-s0"), ("SA", "SV", "cyclegan-s0"),
        ("SA", "SV", "segrenorm-s3"), ("SA", "SV", "cyclegan-s3"),
        ("SV", "PI", "segrenorm-s0"), ("SV", "PI", "cyclegan-s0"),
        ("SV", "PI", "segrenorm-s3"), ("SV", "PI", "cyclegan-s3"),
    ]  # fmt: skip
    for job in jobs:
        cfg = job.config
        assert (cfg.data.source, cfg.data.target) == (job.source, job.target)
        assert cfg.model.translator.value == job.kind and cfg.run.seed == job.seed
        assert cfg.data.n_classes == 2 and cfg.optim.iterations == 7  # the overrides kept
    assert len({json.dumps(j.config.to_dict(), sort_keys=True) for j in jobs}) == len(jobs)


def test_base_config_falls_back_when_the_msseg_cpu_preset_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    said: list[str] = []
    monkeypatch.delitem(PRESETS, "msseg-cpu", raising=False)
    config = flair.base_config("msseg-cpu", ["optim.iterations=5"], said.append)
    assert config.name == "cpu" and config.data.n_classes == 2 and config.optim.iterations == 5
    assert said == ["note: no msseg-cpu preset here; using cpu --set data.n_classes=2"]
    monkeypatch.setitem(PRESETS, "msseg-cpu", load_config("msseg"))
    assert flair.base_config("msseg-cpu", [], said.append).name == "msseg"
    assert len(said) == 1


def test_train_jobs_shards_reuses_and_resumes(tmp_path: Path) -> None:
    cache, runs = tmp_path / "cache", tmp_path / "runs"
    cache.mkdir()
    config = load_config("cpu", overrides=["optim.iterations=4", "optim.decay_iterations=0"])
    jobs = flair.plan(config, [("SA", "SV"), ("SA", "PI")], ["segrenorm", "cyclegan"], [0])
    said: list[str] = []
    # A run of job 3 stopped at step 2: its owner resumes it.
    stopped = fake_run(runs, jobs[3].config, cache, 2)
    first = FakeTrainer()
    done = flair.train_jobs(jobs, cache, runs, (0, 2), train=first, say=said.append)
    assert [c[:4] for c in first.calls] == [
        ("SA", "SV", "segrenorm", 0),
        ("SA", "PI", "segrenorm", 0),
    ]
    assert [done[j] is None for j in jobs] == [False, True, False, True]
    assert said[1] == "SA -> SV cyclegan-s0: left to shard 1/2"
    second = FakeTrainer()
    done = flair.train_jobs(jobs, cache, runs, (1, 2), train=second, say=said.append)
    assert [c[:4] for c in second.calls] == [
        ("SA", "SV", "cyclegan", 0),
        ("SA", "PI", "cyclegan", 0),
    ]
    assert second.calls[1][4] == stopped and done[jobs[3]] == stopped
    assert all(done[j] is not None for j in jobs)
    assert any(line.startswith("SA -> SV segrenorm-s0: reusing ") for line in said)
    # Everything finished: one process reuses all four and trains nothing.
    third = FakeTrainer()
    again = flair.train_jobs(jobs, cache, runs, train=third, say=said.append)
    assert third.calls == [] and again == done
    # Another seed is another config: a dry run plans it without training.
    more = flair.plan(config, [("SA", "SV")], ["segrenorm"], [1])
    said.clear()
    assert flair.train_jobs(more, cache, runs, dry_run=True, train=third, say=said.append) == {
        more[0]: None
    }
    assert said == ["SA -> SV segrenorm-s1: would train"] and third.calls == []


def hand_results() -> dict[str, Any]:
    """A direction's results.json, by hand: seeds 0 and 1 of segrenorm, one of cyclegan."""
    dice = {"none": 0.37, "histogram": 0.40, "segrenorm-s0": 0.50, "segrenorm-s1": 0.46,
            "segrenorm-s0 (wrong seg)": 0.30, "cyclegan-s0": 0.41}  # fmt: skip
    methods = {name: ("run" if "-s" in name else "baseline") for name in dice}
    rows = {f"target→{m}": {"dice": {"mean": [0.99, d]}, "iou": {"mean": [0.98, d / (2 - d)]}}
            for m, d in dice.items()}  # fmt: skip
    rows["source→source"] = {"dice": {"mean": [0.99, 0.53]}}
    rows["target→none"] = {"dice": {"mean": [0.99, 0.37]}}
    recovery = {m: [None, (d - 0.37) / (0.53 - 0.37)] for m, d in dice.items()}
    paired = {m: {"ssim": 0.5 + d, "psnr": 20 + 10 * d, "clean": {"ssim": 0.6 + d, "psnr": 25.0}}
              for m, d in dice.items()}  # fmt: skip
    detection = {m: {"tp": {"mean": 10.0}, "fn": {"mean": 4.0 - 5 * (d - 0.37)},
                     "fp": {"mean": 3.0, "seed_std": 1.0}, "lesion_dice": {"mean": d - 0.1}}
                 for m, d in dice.items()}  # fmt: skip
    contrast = {m: {"ratio_mean": 1.0 + d, "inversions": 0 if "segrenorm" in m else 2}
                for m, d in dice.items()}  # fmt: skip
    return {
        "sites": {"source": "SA", "target": "SV"},
        "class_names": ["background", "lesion"],
        "methods": methods,
        "paired": {"methods": paired},
        "distribution": {"methods": {m: {"kid_ratio": 2 * d} for m, d in dice.items()}},
        "segmentation": {"rows": rows, "gap_recovery": recovery},
        "lesions": {"detection": {"methods": detection},
                    "contrast": {"methods": contrast, "target": {"ratio_mean": 1.6}}},
    }  # fmt: skip


def test_direction_table_from_a_hand_written_results_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = flair.direction_table(hand_results(), [0, 1])
    assert table["sites"] == {"source": "SA", "target": "SV"}
    assert table["reference"] == {"target on source": 0.37, "source in-domain": 0.53,
                                  "target contrast": 1.6}  # fmt: skip
    methods = table["methods"]
    assert list(methods) == ["none", "histogram", "segrenorm", "segrenorm (wrong seg)", "cyclegan"]
    seg = methods["segrenorm"]
    assert seg["Dice lesion"]["n"] == 2
    assert seg["Dice lesion"]["mean"] == pytest.approx(0.48)
    assert seg["Dice lesion"]["std"] == pytest.approx(statistics.stdev([0.50, 0.46]))
    assert seg["recovery"]["mean"] == pytest.approx((0.48 - 0.37) / 0.16)
    assert seg["removed"]["mean"] == pytest.approx(4.0 - 5 * 0.11)
    assert seg["hallucinated"]["mean"] == 3.0 and seg["detected"]["mean"] == 10.0
    assert seg["inversions"] == {"mean": 0.0, "std": 0.0, "n": 2}
    assert seg["SSIM clean"]["mean"] == pytest.approx(1.08) and seg["PSNR clean"]["std"] == 0.0
    assert seg["KID ratio"]["mean"] == pytest.approx(0.96)
    assert seg["IoU lesion"]["mean"] == pytest.approx((0.50 / 1.50 + 0.46 / 1.54) / 2)
    assert methods["cyclegan"]["inversions"] == {"mean": 2.0, "std": 0.0, "n": 1}
    assert methods["segrenorm (wrong seg)"]["Dice lesion"]["mean"] == pytest.approx(0.30)
    assert methods["none"]["recovery"]["mean"] == 0.0
    flair.print_table("SA -> SV", table)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == ("SA -> SV (lesion Dice: target on source 0.370, source in-domain 0.530, "
                        "target contrast 1.600)")  # fmt: skip
    assert lines[2].split() == [
        "method", "SSIM", "PSNR", "SSIM", "clean", "PSNR", "clean", "KID", "ratio", "Dice",
        "lesion", "IoU", "lesion", "recovery", "removed", "hallucinated", "detected", "lesion",
        "Dice", "contrast", "inversions",
    ]  # fmt: skip
    row = next(line for line in lines if line.startswith("segrenorm "))
    assert "0.4800 ± 0.0283" in row


def test_direction_table_without_lesions_or_paired_truth_leaves_those_columns_out(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = hand_results()
    del results["lesions"], results["paired"]
    results["segmentation"]["gap_recovery"]["cyclegan-s0"] = [None, math.nan]
    table = flair.direction_table(results, [0, 1])
    assert "target contrast" not in table["reference"]
    assert set(table["methods"]["segrenorm"]) == {"KID ratio", "Dice lesion", "IoU lesion",
                                                  "recovery"}  # fmt: skip
    assert "recovery" not in table["methods"]["cyclegan"]  # NaN: no gap, no figure
    flair.print_table("SA -> SV", table)
    header = capsys.readouterr().out.splitlines()[2]
    assert header.split() == ["method", "KID", "ratio", "Dice", "lesion", "IoU", "lesion",
                              "recovery"]  # fmt: skip


def test_direction_table_gives_each_tissue_class_its_own_recovery_column(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = hand_results()
    results["class_names"] = ["background", "CSF", "WM", "lesion"]
    # Per method: CSF and WM recoveries by hand, the lesion's from hand_results (index 1 before).
    tissue = {"none": (0.0, 0.0), "histogram": (-2.5, 0.1), "segrenorm-s0": (0.5, 0.8),
              "segrenorm-s1": (0.3, 0.6), "segrenorm-s0 (wrong seg)": (0.1, math.nan),
              "cyclegan-s0": (0.2, 0.4)}  # fmt: skip
    recovery = results["segmentation"]["gap_recovery"]
    for method, (csf, wm) in tissue.items():
        recovery[method] = [None, {"mean": csf}, wm, recovery[method][1]]
    table = flair.direction_table(results, [0, 1])
    seg = table["methods"]["segrenorm"]
    assert seg["recovery CSF"]["mean"] == pytest.approx(0.4)
    assert seg["recovery CSF"]["std"] == pytest.approx(statistics.stdev([0.5, 0.3]))
    assert seg["recovery WM"]["mean"] == pytest.approx(0.7) and seg["recovery WM"]["n"] == 2
    assert seg["recovery"]["mean"] == pytest.approx((0.48 - 0.37) / 0.16)  # still the lesion's
    assert "recovery lesion" not in seg and "recovery background" not in seg
    assert "recovery WM" not in table["methods"]["segrenorm (wrong seg)"]  # NaN: left out
    assert table["methods"]["histogram"]["recovery CSF"]["mean"] == -2.5
    flair.print_table("SA -> SV", table)
    header = capsys.readouterr().out.splitlines()[2].split()
    at = header.index("recovery")
    assert header[at : at + 5] == ["recovery", "recovery", "CSF", "recovery", "WM"]
    assert header[at + 5] == "removed"


def test_print_table_widens_a_column_to_its_widest_cell(capsys: pytest.CaptureFixture[str]) -> None:
    cell = {"mean": 149.8333, "std": 18.6205, "n": 2}  # 18 characters with its spread
    entry = {"reference": {},
             "methods": {"a much longer method label (wrong seg)": {"hallucinated": cell},
                         "none": {"hallucinated": {"mean": 3.0, "std": 0.0, "n": 1},
                                  "SSIM": {"mean": 0.5, "std": 0.0, "n": 1}}}}  # fmt: skip
    flair.print_table("SA -> SV", entry)
    header, wide, short = capsys.readouterr().out.splitlines()[2:5]
    assert wide == "a much longer method label (wrong seg) " + " " * 18 + " 149.8333 ± 18.6205"
    # Every column ends where its header ends, so the cells stay under their names.
    assert len(header) == len(wide) == len(short)
    assert header.split() == ["method", "SSIM", "hallucinated"]
    assert short.split() == ["none", "0.5000", "3.0000"] and short.endswith(" " * 13 + "3.0000")
    assert header.index("SSIM") == len("a much longer method label (wrong seg) ") + 18 - 4


def stub_listing(root: Path) -> Path:
    """What ``simulate flair`` will write, in miniature: SA, SV, PI with binary lesion masks."""
    from segrenorm.volumes.images import Geometry
    from segrenorm.volumes.readwrite import save_image, save_label

    shape = (32, 32, 6)
    geometry = Geometry.from_affine(np.diag([2.0, 2.0, 2.0, 1.0]), shape)
    grid = np.indices(shape).astype(np.float64)
    lines = ["subject,site,image,label,split"]
    for s, (site, gain) in enumerate((("SA", 1.0), ("SV", 1.4), ("PI", 0.7))):
        for k, split in enumerate(("train", "train", "test")):
            rng = np.random.default_rng([s, k])
            brain = np.sqrt(((grid[:2] - 15.5) ** 2).sum(0)) < 12
            centre = rng.uniform(10, 21, 2)
            lesion = (np.sqrt(((grid[:2] - centre[:, None, None, None]) ** 2).sum(0)) < 3) & brain
            image = brain * (300.0 + gain * 500.0 * lesion + rng.normal(0, 20, shape))
            name = f"{site}-{k}"
            img = save_image(np.abs(image).astype(np.float32), root / site / f"{name}.nii.gz",
                             geometry=geometry)  # fmt: skip
            lab = save_label(lesion.astype(np.uint8), root / site / f"{name}_lesion.nii.gz",
                             geometry=geometry)  # fmt: skip
            lines.append(f"{name},{site},{img},{lab},{split}")
    (root / "subjects.csv").write_text("\n".join(lines) + "\n")
    return root / "subjects.csv"


def test_main_runs_simulate_prepare_train_and_evaluate(
    tmp_path: Path,
    tiny_kit: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from segrenorm.cli import main as real_cli

    called: list[list[str]] = []

    def cli(argv: list[str]) -> int:
        called.append(list(argv))
        if argv[:2] == ["simulate", "flair"]:  # J1's command, stood in for by the stub
            stub_listing(Path(argv[argv.index("--out") + 1]))
            return 0
        return real_cli(argv)

    monkeypatch.setattr(flair, "cli", cli)
    out = tmp_path / "bench"
    tiny = [s for s in tiny_kit.train_set if "crop_size" not in s]
    sets = ["optim.iterations=1", "optim.decay_iterations=0", "data.crop_size=0",
            "run.log_every=1", *tiny]  # fmt: skip
    argv = ["--out", str(out), "--config", "cpu", "--set", "data.n_classes=2",
            *tiny_kit.flags("--set", sets), "--translators", "segrenorm", "--directions",
            "SA:SV,SV:PI", "--split", "test", "--baselines", "histogram",
            "--bias-correction", "none",
            *tiny_kit.flags("--eval-set", tiny_kit.eval_set)]  # fmt: skip
    torch.set_num_threads(1)
    assert flair.main([*argv, "--dry-run"]) == 0
    assert called == [] and not out.exists()
    assert "SA -> SV segrenorm-s0: would train" in capsys.readouterr().out
    assert flair.main(argv) == 0
    assert [c[:2] for c in called] == [["simulate", "flair"], ["prepare", "--csv"]]
    assert called[0][2:] == ["--out", str(out / "data"), "--resolution", "2", "--labels",
                             "lesion"]  # fmt: skip
    assert called[1][called[1].index("--target") + 1] == "SV"
    classes = called[1][called[1].index("--class-names") + 1 : called[1].index("--bias-correction")]
    assert classes == ["background", "lesion"]
    printed = capsys.readouterr().out
    assert "\nSA -> SV (lesion Dice:" in printed and "\nSV -> PI (lesion Dice:" in printed
    record = json.loads((out / "flair.json").read_text())
    entry = record["test"]["directions"]["SA->SV"]
    assert entry["sites"] == {"source": "SA", "target": "SV"}
    assert set(entry["methods"]) >= {"none", "histogram", "segrenorm"}
    assert entry["report"] == str(out / "report-SA-to-SV-test")
    results = json.loads((out / "report-SA-to-SV-test" / "results.json").read_text())
    assert entry["methods"]["segrenorm"]["KID ratio"]["mean"] == pytest.approx(
        results["distribution"]["methods"]["segrenorm-s0"]["kid_ratio"]
    )
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == ["00000-cpu-segrenorm-SA-to-SV", "00001-cpu-segrenorm-SV-to-PI"]
    # Again: the data, the cache and both runs are reused; only the evaluation is redone.
    called.clear()
    assert flair.main([*argv, "--train-only"]) == 0
    assert called == [] and "reusing" in capsys.readouterr().out
    # Shards only train, and need the cache first.
    with pytest.raises(SystemExit, match="--shard trains only: add --train-only"):
        flair.main([*argv, "--shard", "0/2"])
    with pytest.raises(SystemExit, match=r"--shard '2/2' is not I/N"):
        flair.main([*argv, "--train-only", "--shard", "2/2"])
    other = ["--out", str(tmp_path / "other"), "--train-only", "--shard", "1/2"]
    with pytest.raises(SystemExit, match="data is missing: run once with --prepare-only"):
        flair.main([*argv, *other])
    assert not (tmp_path / "other").exists()
    shutil.copytree(out / "data", tmp_path / "other" / "data")
    with pytest.raises(SystemExit, match="cache is missing: run once with --prepare-only"):
        flair.main([*argv, *other])
    # --prepare-only makes the cache, after which a shard finds it and trains its jobs.
    assert flair.main([*argv, "--out", str(tmp_path / "other"), "--prepare-only"]) == 0
    assert (tmp_path / "other" / "cache" / "manifest.json").is_file()
    assert not (tmp_path / "other" / "runs").exists()
    capsys.readouterr()
    assert flair.main([*argv, *other]) == 0
    said = capsys.readouterr().out
    assert "SA -> SV segrenorm-s0: left to shard 0/2" in said
    assert "SV -> PI segrenorm-s0: training" in said


def test_class_names_follow_the_data_folders_label_set_and_refuse_another(tmp_path: Path) -> None:
    assert flair.class_names(tmp_path, None) == ["background", "lesion"]  # nothing recorded
    assert flair.class_names(tmp_path, "tissue+lesion") == ["background", "CSF", "GM", "WM",
                                                           "lesion"]  # fmt: skip
    held = ["background", "CSF", "GM", "WM", "lesion"]
    record = {"labels": {"set": "tissue+lesion", "class_names": held}}
    (tmp_path / "simulation.json").write_text(json.dumps(record))
    assert flair.class_names(tmp_path, None) == held
    assert flair.class_names(tmp_path, "tissue+lesion") == held
    with pytest.raises(SystemExit, match=r"holds the 'tissue\+lesion' label set, not --labels "
                       r"'lesion': drop --labels"):  # fmt: skip
        flair.class_names(tmp_path, "lesion")


def test_a_cache_prepared_with_other_classes_is_refused(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "manifest.json").write_text(json.dumps({"class_names": ["background", "lesion"]}))
    args = SimpleNamespace(dry_run=False, shard="0/1")
    assert flair._cache(args, tmp_path, tmp_path, ["background", "lesion"]) == cache
    with pytest.raises(SystemExit, match=r"prepared with classes \['background', 'lesion'\], "
                       r"not \['background', 'CSF', 'GM', 'WM', 'lesion'\]"):  # fmt: skip
        flair._cache(args, tmp_path, tmp_path, ["background", "CSF", "GM", "WM", "lesion"])
