"""Tests for training on a pair of a many-site cache: data.source/target, train --to, resume,
and evaluate opening the cache with the runs' pair."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from segrenorm.cli import main
from segrenorm.config.load import load_config
from segrenorm.data.batches import BatchStream
from segrenorm.data.facts import TrainingFacts
from segrenorm.errors import ConfigError
from segrenorm.models.checkpoint import load_checkpoint
from segrenorm.training.trainer import train
from segrenorm.workflows.pairs import evaluation_pair, model_pair, train_toward

#: One whole-slice step of the tiny networks (32x32 slices, stride 4).
ONE_STEP = {"iterations": 1, "decay_iterations": 0, "warmup_iterations": 0}
QUIET = {"checkpoint_every": 0, "image_every": 0, "log_every": 1}
#: The same for ``segrenorm train --set``.
CLI_SET = ["optim.iterations=1", "optim.decay_iterations=0", "data.crop_size=0",
           "run.log_every=1"]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def facts_of(run_dir: Path) -> TrainingFacts:
    return TrainingFacts.from_checkpoint(load_checkpoint(run_dir / "final.pt"), run_dir)


def held_out(cache: Path, site: str) -> dict[str, Any]:
    """From the manifest: the test subjects of ``site`` (a name) and their slice count."""
    manifest = json.loads((cache / "manifest.json").read_text())
    key = next(k for k, name in manifest["sites"].items() if name == site)
    rows = [s for s in manifest["subjects"] if s["site"] == key and s["split"] == "test"]
    return {"subjects": [s["subject"] for s in rows], "n_slices": sum(s["n_slices"] for s in rows)}


def check_pair(results: dict[str, Any], cache: Path, source: str, target: str) -> None:
    """The report scored exactly ``source``'s and ``target``'s held-out rows of ``cache``."""
    src, tgt = held_out(cache, source), held_out(cache, target)
    assert results["sites"] == {"source": source, "target": target}
    assert results["n_slices"] == {"source": src["n_slices"], "target": tgt["n_slices"]}
    n_subjects = {"source": len(src["subjects"]), "target": len(tgt["subjects"])}
    assert results["n_subjects"] == n_subjects
    rows = results["segmentation"]["rows"]
    assert rows["source→source"]["subjects"] == src["subjects"]
    assert rows["target→target"]["subjects"] == tgt["subjects"]


def test_training_on_a_chosen_pair_reads_its_sites(
    three_sites: SimpleNamespace,
    tmp_path: Path,
    tiny_kit: SimpleNamespace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches: list[dict[str, torch.Tensor]] = []
    original = BatchStream.__next__

    def recording(self: BatchStream) -> dict[str, torch.Tensor]:
        batch = original(self)
        batches.append(batch)
        return batch

    monkeypatch.setattr(BatchStream, "__next__", recording)
    config = tiny_kit.config(
        data={"crop_size": 0, "source": "siteC", "target": "siteA"}, optim=ONE_STEP, run=QUIET
    )
    run_dir = train(config, three_sites.cache, tmp_path / "runs", progress=False)
    assert run_dir.name == "00000-tiny-segrenorm-siteC-to-siteA"
    facts = facts_of(run_dir)
    assert dict(facts.site_names) == {"A": "siteC", "B": "siteA"}
    assert facts.source_name("AB") == "siteC" and facts.target_name("AB") == "siteA"
    # The first batch's source slices are rows of siteC's array (folder C), targets of A's.
    first = batches[0]
    images_c = np.load(three_sites.cache / "C" / "images.npy")
    images_a = np.load(three_sites.cache / "A" / "images.npy")
    for i, row in enumerate(first["a_row"].tolist()):
        np.testing.assert_array_equal(first["a"][i, 0].numpy(), images_c[row])
    for i, row in enumerate(first["b_row"].tolist()):
        np.testing.assert_array_equal(first["b"][i, 0].numpy(), images_a[row])
    record = json.loads((run_dir / "config.json").read_text())
    assert record["config"]["data"]["source"] == "siteC"
    assert record["cache_info"]["sites"] == ["siteC", "siteA"]
    assert model_pair(run_dir) == ("siteC", "siteA")


def test_training_a_many_site_cache_without_a_pair_is_refused(
    three_sites: SimpleNamespace, tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    with pytest.raises(ConfigError, match=r"holds 3 sites .*--set data.source=NAME"):
        train(tiny_kit.config(), three_sites.cache, tmp_path / "runs", progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    with pytest.raises(ConfigError, match=r"data\.source and data\.target are both 'siteA'"):
        tiny_kit.config(data={"source": "siteA", "target": "siteA"})


def test_train_to_trains_one_run_per_pair_and_reuses_finished_ones(
    three_sites: SimpleNamespace,
    tmp_path: Path,
    tiny_kit: SimpleNamespace,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = tmp_path / "runs"
    argv = ["train", "--config", "cpu", "--data", str(three_sites.cache), "--out", str(runs),
            "--to", "siteA", "--no-progress",
            *tiny_kit.flags("--set", [*tiny_kit.train_set, *CLI_SET])]  # fmt: skip
    assert main([*argv, "--dry-run"]) == 0
    plan = capsys.readouterr()
    assert "2 pair(s) toward siteA" in plan.err
    assert "siteB -> siteA: would train a new run" in plan.err
    assert "siteC -> siteA: would train a new run" in plan.err
    assert not runs.exists() or not any(runs.iterdir())
    assert main(argv) == 0
    out = capsys.readouterr().out.split()
    assert [Path(p).name for p in out] == [
        "00000-cpu-segrenorm-siteB-to-siteA",
        "00001-cpu-segrenorm-siteC-to-siteA",
    ]
    assert [model_pair(p) for p in out] == [("siteB", "siteA"), ("siteC", "siteA")]
    # Again: both pairs are found finished and reused, nothing new is trained.
    assert main(argv) == 0
    again = capsys.readouterr()
    assert again.out.split() == out
    assert again.err.count("reused") == 2 and f"already finished in {out[0]}" in again.err
    assert sorted(p.name for p in runs.iterdir()) == sorted(Path(p).name for p in out)
    # A different config is not the same pair run: it is planned anew.
    longer = [*argv, "--set", "optim.iterations=2", "--dry-run"]
    assert main(longer) == 0
    assert capsys.readouterr().err.count("would train a new run") == 2


def test_train_to_refusals(
    three_sites: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["train", "--config", "cpu", "--data", str(three_sites.cache), "--out",
            str(tmp_path / "runs")]  # fmt: skip
    assert main([*base, "--to", "siteZ", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "target site 'siteZ' is not in the cache" in err and "choose with --to NAME" in err
    assert main([*base, "--to", "siteA", "--set", "data.source=siteB", "--dry-run"]) == 2
    assert "data.source='siteB' picks one pair" in capsys.readouterr().err
    assert main([*base, "--to", "siteA", "--iterations", "1"]) == 2
    assert "cannot be combined with --resume or --iterations" in capsys.readouterr().err
    assert main([*base, "--to", "siteA", "--set", "data.direction=BA", "--dry-run"]) == 2
    assert "data.direction='BA' with --to siteA" in capsys.readouterr().err
    config_ba = load_config("cpu", overrides=["data.direction=BA"])
    with pytest.raises(ConfigError, match=r"data\.direction='BA' with --to siteA: .*drop"):
        train_toward(config_ba, three_sites.cache, tmp_path / "runs", "siteA", dry_run=True)
    config = load_config("cpu", overrides=["data.target=siteB"])
    with pytest.raises(ConfigError, match=r"data\.target='siteB' differs from --to siteA"):
        train_toward(config, three_sites.cache, tmp_path / "runs", "siteA", dry_run=True)
    assert not (tmp_path / "runs").exists()


def test_resume_reopens_the_runs_pair_and_train_to_resumes_it(
    three_sites: SimpleNamespace,
    tmp_path: Path,
    tiny_kit: SimpleNamespace,
    capsys: pytest.CaptureFixture[str],
) -> None:
    sets = tiny_kit.flags("--set", [*tiny_kit.train_set, *CLI_SET, "optim.iterations=2"])
    base = ["train", "--config", "cpu", "--data", str(three_sites.cache), "--out",
            str(tmp_path / "runs"), "--no-progress", *sets]  # fmt: skip
    pair = ["--set", "data.source=siteB", "--set", "data.target=siteC"]
    assert main([*base, *pair, "--iterations", "1"]) == 0
    run_dir = Path(capsys.readouterr().out.split()[-1])
    assert run_dir.name == "00000-cpu-segrenorm-siteB-to-siteC"
    assert load_checkpoint(run_dir / "final.pt")["step"] == 1
    # train --to sees the pair's run stopped part-way: it would resume it, not reuse it.
    assert main([*base, "--to", "siteC", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "siteA -> siteC: would train a new run" in err
    assert f"siteB -> siteC: would resume {run_dir} at step 1" in err
    # Resume with nothing but the run: its config brings the pair, its record the cache.
    assert main(["train", "--resume", str(run_dir), "--no-progress"]) == 0
    assert Path(capsys.readouterr().out.split()[-1]) == run_dir
    assert dict(facts_of(run_dir).site_names) == {"A": "siteB", "B": "siteC"}
    assert load_checkpoint(run_dir / "final.pt")["step"] == 2
    assert main([*base, "--to", "siteC", "--dry-run"]) == 0
    assert f"siteB -> siteC: already finished in {run_dir}; reused" in capsys.readouterr().err


def test_evaluation_pair_follows_the_runs(
    three_sites: SimpleNamespace, tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    save = tiny_kit.save_checkpoint
    c_to_a = save(tmp_path / "ca.pt", site_names={"A": "siteC", "B": "siteA"})
    b_to_a = save(tmp_path / "ba.pt", site_names={"A": "siteB", "B": "siteA"})
    cache = three_sites.cache
    assert evaluation_pair(cache, {"x": c_to_a}) == ("siteC", "siteA")
    assert evaluation_pair(cache, {}, "siteB", "siteC") == ("siteB", "siteC")
    assert evaluation_pair(cache, {}) is None
    with pytest.raises(ConfigError, match=r"different site pairs: x \(siteC -> siteA\), y"):
        evaluation_pair(cache, {"x": c_to_a, "y": b_to_a})
    with pytest.raises(ConfigError, match="--source siteB differs from the runs' pair"):
        evaluation_pair(cache, {"x": c_to_a}, source="siteB")
    # A two-site cache of other site names is read as it is (as before pairs existed).
    two = tiny_kit.cache(tmp_path / "two")
    assert evaluation_pair(two, {"x": c_to_a}) is None
    # One sharing only one name with the runs' pair lacks the other site: refused.
    names = list(json.loads((two / "manifest.json").read_text())["sites"].values())
    x_to_b = save(tmp_path / "xb.pt", site_names={"A": "siteX", "B": names[1]})
    with pytest.raises(ConfigError, match=rf"trained on siteX -> {names[1]}, .*lacks site siteX"):
        evaluation_pair(two, {"x": x_to_b})
    b_to_x = save(tmp_path / "bx.pt", site_names={"A": names[1], "B": "siteX"})
    with pytest.raises(ConfigError, match="lacks site siteX"):
        evaluation_pair(two, {"x": b_to_x})
    # The runs' pair the other way round on that cache is its pair, swapped.
    swapped = save(tmp_path / "swapped.pt", site_names={"A": names[1], "B": names[0]})
    assert evaluation_pair(two, {"x": swapped}) == (names[1], names[0])


def test_evaluate_on_a_many_site_cache_uses_the_runs_pair(
    three_sites: SimpleNamespace,
    tmp_path: Path,
    tiny_kit: SimpleNamespace,
    eval_kit: SimpleNamespace,
) -> None:
    from segrenorm.workflows.evaluate import evaluate_cache

    model = tiny_kit.save_checkpoint(tmp_path / "ca.pt", site_names={"A": "siteC", "B": "siteA"},
                                     spacing=[2.0, 2.0, 2.0])  # fmt: skip
    _, results = evaluate_cache(
        three_sites.cache, tmp_path / "report", models={"segrenorm": model}, baselines=[],
        config=eval_kit.evaluation(), device="cpu",
    )  # fmt: skip
    text = json.dumps(results)
    assert "siteC" in text and "siteA" in text and "siteB" not in text
    check_pair(results, three_sites.cache, "siteC", "siteA")
    with pytest.raises(ConfigError, match=r"holds 3 sites .*choose them with --model RUN"):
        evaluate_cache(three_sites.cache, tmp_path / "none", harmonized={}, baselines=[])
    assert not (tmp_path / "none").exists()
    # A harmonized folder without a run: --source/--target pick the pair (here siteB's test
    # subject, "harmonized" as itself).
    folder = tmp_path / "as-is"
    folder.mkdir()
    for r in three_sites.records:
        if r.site == "siteB" and r.split == "test":
            shutil.copy(r.image, folder / r.image.name)
    _, results = evaluate_cache(
        three_sites.cache, tmp_path / "folder", harmonized={"as-is": folder}, baselines=[],
        config=eval_kit.evaluation(), source="siteB", target="siteC",
    )  # fmt: skip
    text = json.dumps(results)
    assert "siteB" in text and "siteC" in text and "siteA" not in text
    check_pair(results, three_sites.cache, "siteB", "siteC")


def test_evaluate_cli_source_and_target_choose_the_pair(
    three_sites: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["evaluate", "--cache", str(three_sites.cache), "--out", str(tmp_path / "report"),
            "--baselines", "none"]  # fmt: skip
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "holds 3 sites (siteA (A), siteB (B), siteC (C))" in err
    assert "--model RUN (its pair) or --source NAME --target NAME" in err
    assert "data.source" not in err  # train's flags are no help here
    assert main([*base, "--source", "siteX", "--target", "siteA"]) == 2
    err = capsys.readouterr().err
    assert "source site 'siteX' is not in the cache" in err
    assert "choose with --model RUN (its pair) or --source NAME --target NAME" in err
    assert main([*base, "--source", "siteB"]) == 2
    err = capsys.readouterr().err
    assert "name the target site too (--model RUN (its pair) or --source" in err
    assert not (tmp_path / "report").exists()
