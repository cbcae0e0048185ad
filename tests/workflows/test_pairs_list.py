"""Tests for ``segrenorm train --pairs SRC:TGT,...``: chosen pairs of a many-site cache, one
model each, the same plan, reuse and refusals as ``--to`` (which is the pairs "every other
site -> T")."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from segrenorm.cli import main
from segrenorm.cli.train_cmd import parse_pairs
from segrenorm.config.load import load_config
from segrenorm.errors import ConfigError
from segrenorm.workflows.pairs import model_pair, train_pairs

#: One whole-slice step of the tiny networks, for ``segrenorm train --set``.
CLI_SET = ["optim.iterations=1", "optim.decay_iterations=0", "data.crop_size=0",
           "run.log_every=1"]  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def base_argv(cache: Path, runs: Path) -> list[str]:
    return ["train", "--config", "cpu", "--data", str(cache), "--out", str(runs)]


def test_parse_pairs_reads_comma_separated_source_target_items() -> None:
    assert parse_pairs("SA:SV,SA:PI,SV:PI") == [("SA", "SV"), ("SA", "PI"), ("SV", "PI")]
    assert parse_pairs(" A : B , C:A ") == [("A", "B"), ("C", "A")]
    for bad, item in (("SA", "SA"), ("SA:SV,", ""), (":SV", ":SV"), ("SA:", "SA:"),
                      ("SA:SV:PI", "SA:SV:PI"), ("SA-SV", "SA-SV")):  # fmt: skip
        with pytest.raises(ConfigError, match=rf"--pairs item '{item}' of .* not SOURCE:TARGET"):
            parse_pairs(bad)


def test_pairs_plan_trains_in_the_given_order_and_reuses_finished_pairs(
    three_sites: SimpleNamespace,
    tmp_path: Path,
    tiny_kit: SimpleNamespace,
    capsys: pytest.CaptureFixture[str],
) -> None:
    runs = tmp_path / "runs"
    sets = tiny_kit.flags("--set", [*tiny_kit.train_set, *CLI_SET])
    # Keys and names mix: C is siteC, A is siteA.
    argv = [*base_argv(three_sites.cache, runs), "--pairs", "C:siteA,siteB:A", "--no-progress",
            *sets]  # fmt: skip
    assert main([*argv, "--dry-run"]) == 0
    plan = capsys.readouterr()
    assert plan.out == ""
    lines = plan.err.splitlines()
    assert lines[0] == f"segrenorm train: 2 pair(s), one model each, in {runs}:"
    assert lines[1:] == [
        "segrenorm train:   siteC -> siteA: would train a new run",
        "segrenorm train:   siteB -> siteA: would train a new run",
    ]
    assert not runs.exists() or not any(runs.iterdir())
    assert main(argv) == 0
    out = capsys.readouterr().out.split()
    assert [Path(p).name for p in out] == [
        "00000-cpu-segrenorm-siteC-to-siteA",
        "00001-cpu-segrenorm-siteB-to-siteA",
    ]
    assert [model_pair(p) for p in out] == [("siteC", "siteA"), ("siteB", "siteA")]
    # --to siteA is the same two pairs (in cache order): both are found finished and reused.
    to = [*base_argv(three_sites.cache, runs), "--to", "siteA", "--no-progress", *sets]
    assert main(to) == 0
    again = capsys.readouterr()
    assert again.out.split() == [out[1], out[0]]
    assert again.err.count("; reused") == 2
    # A third pair is new; the two finished ones are reused by --pairs too.
    more = [*base_argv(three_sites.cache, runs), "--pairs", "siteB:siteA,siteA:siteC,siteC:siteA",
            "--no-progress", *sets]  # fmt: skip
    assert main([*more, "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert f"siteB -> siteA: already finished in {out[1]}; reused" in err
    assert "siteA -> siteC: would train a new run" in err
    assert f"siteC -> siteA: already finished in {out[0]}; reused" in err
    assert sorted(p.name for p in runs.iterdir()) == sorted(Path(p).name for p in out)


def test_train_pairs_returns_one_entry_per_pair_with_site_names(
    three_sites: SimpleNamespace, tmp_path: Path, tiny_kit: SimpleNamespace
) -> None:
    said: list[str] = []
    config = tiny_kit.config(data={"crop_size": 0})
    runs = train_pairs(config, three_sites.cache, tmp_path / "runs", [("B", "C"), ("siteC", "A")],
                       dry_run=True, say=said.append)  # fmt: skip
    assert [(r.source, r.target, r.status, r.run_dir) for r in runs] == [
        ("siteB", "siteC", "planned", None),
        ("siteC", "siteA", "planned", None),
    ]
    assert [(r.config.data.source, r.config.data.target) for r in runs] == [
        ("siteB", "siteC"),
        ("siteC", "siteA"),
    ]
    assert said[0].startswith("2 pair(s), one model each")
    assert not (tmp_path / "runs").exists()


def test_pairs_refusals(
    three_sites: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    base = base_argv(three_sites.cache, runs)
    assert main([*base, "--pairs", "siteZ:siteA", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "source site 'siteZ' is not in the cache" in err
    assert "siteA (A), siteB (B), siteC (C)" in err
    assert "choose with --pairs SOURCE:TARGET (names or keys)" in err
    assert main([*base, "--pairs", "siteA:D", "--dry-run"]) == 2
    assert "target site 'D' is not in the cache" in capsys.readouterr().err
    assert main([*base, "--pairs", "siteA:B,A:siteB", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--pairs gives the pair siteA -> siteB twice (siteA:B,A:siteB)" in err
    assert main([*base, "--pairs", "siteB:B", "--dry-run"]) == 2
    assert "item siteB:B translates site siteB to itself" in capsys.readouterr().err
    assert main([*base, "--pairs", "siteA-siteB", "--dry-run"]) == 2
    assert "is not SOURCE:TARGET" in capsys.readouterr().err
    assert main([*base, "--pairs", "siteB:siteA", "--resume", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "--pairs trains whole pairs" in err and "cannot be combined with --resume" in err
    assert main([*base, "--pairs", "siteB:siteA", "--iterations", "1"]) == 2
    assert "--pairs trains whole pairs" in capsys.readouterr().err
    assert main([*base, "--pairs", "siteB:siteA", "--to", "siteA", "--dry-run"]) == 2
    assert "--to siteA and --pairs siteB:siteA both choose the pairs" in capsys.readouterr().err
    assert main([*base, "--pairs", "siteB:siteA", "--set", "data.source=siteB", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "data.source='siteB' with --pairs siteB:siteA" in err and "drop --set data.source" in err
    assert main([*base, "--pairs", "siteB:siteA", "--set", "data.target=siteA", "--dry-run"]) == 2
    assert "data.target='siteA' with --pairs" in capsys.readouterr().err
    assert main([*base, "--pairs", "siteB:siteA", "--set", "data.direction=BA", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "data.direction='BA' with --pairs siteB:siteA: each model of --pairs" in err
    with pytest.raises(ConfigError, match="--pairs names no pair"):
        train_pairs(load_config("cpu"), three_sites.cache, runs, [], dry_run=True)
    assert not runs.exists()


def test_compare_pairs_compares_each_pair_in_its_own_folder(
    three_sites: SimpleNamespace,
    tmp_path: Path,
    tiny_kit: SimpleNamespace,
    eval_kit: SimpleNamespace,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from segrenorm.workflows.compare import compare_pairs

    config = load_config("cpu", overrides=[*tiny_kit.train_set, *CLI_SET])
    options: dict[str, Any] = {"translators": ["segrenorm"], "baselines": [],
                               "evaluation": eval_kit.evaluation()}  # fmt: skip
    out = tmp_path / "cmp"
    results = compare_pairs(three_sites.cache, out, config, [("B", "A"), ("siteC", "siteA")],
                            **options)  # fmt: skip
    assert list(results) == [("siteB", "siteA"), ("siteC", "siteA")]
    for (source, target), result in results.items():
        run = result.runs["segrenorm"]
        assert run.parent == out / f"{source}-to-{target}" / "runs"
        assert run.name == f"00000-cpu-segrenorm-{source}-to-{target}"
        assert model_pair(run) == (source, target)
        assert result.results["sites"] == {"source": source, "target": target}
        assert result.report.html.parent == out / f"{source}-to-{target}" / "report"
    # Again: each pair's finished run is found in its folder and reused.
    again = compare_pairs(three_sites.cache, out, config, [("siteB", "siteA")], **options)
    assert again[("siteB", "siteA")].train_seconds == {"segrenorm": 0.0}
    assert again[("siteB", "siteA")].runs == results[("siteB", "siteA")].runs
    # The CLI prints each pair's checks under its heading; its refusals come before training.
    argv = ["compare", "--cache", str(three_sites.cache), "--out", str(out), "--config", "cpu",
            *tiny_kit.flags("--set", [*tiny_kit.train_set, *CLI_SET]), "--translators",
            "segrenorm", "--baselines", "none", "--pairs", "siteC:siteA",
            *tiny_kit.flags("--eval-set", tiny_kit.eval_set)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("siteC -> siteA:\n")
    assert f"report: {out / 'siteC-to-siteA' / 'report'}" in printed
    assert main([*argv, "--pairs", "siteC:siteC"]) == 2  # the last --pairs counts
    assert "item siteC:siteC translates site siteC to itself" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"data\.source='siteB' with --pairs siteC:siteA"):
        compare_pairs(three_sites.cache, tmp_path / "x", load_config("cpu", overrides=[
            "data.source=siteB"]), [("siteC", "siteA")], **options)  # fmt: skip
    assert not (tmp_path / "x").exists()
