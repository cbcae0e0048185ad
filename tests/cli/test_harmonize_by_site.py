"""Tests for ``segrenorm harmonize --csv``: one model per source site, rows at the target left
alone, the unseen-site warning (CLI and API share it) and the refusals."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from segrenorm.cli import main
from segrenorm.harmonize.harmonizer import Harmonizer, HarmonizeWarning
from segrenorm.harmonize.sites import RECORD_NAME

UNSEEN_C = "never saw site 'siteC'; trained on siteB -> siteA; results may be off"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_kit: SimpleNamespace) -> dict[str, Path]:
    """Random (non-identity) tiny models B->A and C->A as run folders, and C->B.

    Their networks are alike (one seed); their target scales differ, so each model's output
    is its own.
    """
    root = tmp_path_factory.mktemp("site-models")
    made = {}
    for k, (name, source, target) in enumerate(
        (("b", "siteB", "siteA"), ("c", "siteC", "siteA"), ("cb", "siteC", "siteB"))
    ):
        folder = root / ("runs" if target == "siteA" else "other") / f"0000{k}-{name}"
        folder.mkdir(parents=True)
        target_scale = {**tiny_kit.scaling["B"], "high": 1800.0 * (k + 1)}
        tiny_kit.save_checkpoint(
            folder / "final.pt", identity=False, site_names={"A": source, "B": target},
            scaling={"A": tiny_kit.scaling["A"], "B": target_scale},
        )  # fmt: skip
        made[name] = folder
    return made


def harmonize(argv: list[str]) -> int:
    return main(["harmonize", *argv, "--no-progress", "--device", "cpu"])


def listing(tmp_path: Path, rows: list[tuple[str, str, Path]]) -> Path:
    csv = tmp_path / "listing.csv"
    csv.write_text("subject,site,image\n" + "".join(f"{s},{t},{p}\n" for s, t, p in rows))
    return csv


def expected(model: Path, image: Path) -> np.ndarray:
    """The same volume through the Python API with one model: what the row must hold."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HarmonizeWarning)
        return Harmonizer.load(model, device="cpu").harmonize(image).data


def test_each_row_goes_through_its_sites_model(
    three_sites: SimpleNamespace,
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    argv = ["--csv", str(three_sites.csv), "--model", str(models["b"]), "--model",
            str(models["c"]), "--out", str(out)]  # fmt: skip
    assert harmonize(argv) == 0
    table = capsys.readouterr().out
    assert "9 file(s): 6 harmonized, 3 skipped, 0 failed" in table
    assert "3 row(s) of site siteA are already at the target site and were not translated" in table
    assert "already at the target site siteA: not translated" in table
    record = json.loads((out / RECORD_NAME).read_text())
    assert record["target"] == "siteA"
    by_subject = {row["subject"]: row for row in record["rows"]}
    for r in three_sites.records:
        row = by_subject[r.subject]
        assert row["site"] == r.site
        if r.site == "siteA":
            assert row["status"] == "skipped" and row["model"] is None
            assert not (out / r.site).exists() and not (out / r.image.name).exists()
            continue
        model = models["b" if r.site == "siteB" else "c"]
        assert row["status"] == "ok" and row["model_source"] == r.site
        assert Path(row["model"]) == model / "final.pt"
        assert Path(row["output"]) == out / r.site / r.image.name
        written = np.asarray(nib.load(out / r.site / r.image.name).dataobj)
        np.testing.assert_allclose(written, expected(model, r.image), atol=1e-5)
        other = models["c" if r.site == "siteB" else "b"]
        assert not np.allclose(written, expected(other, r.image), atol=1e-3)


def test_a_folder_of_runs_gives_every_run(
    three_sites: SimpleNamespace,
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    runs = models["b"].parent  # holds the B->A and C->A runs
    assert harmonize(["--csv", str(three_sites.csv), "--model", str(runs), "--out", str(out)]) == 0
    assert "6 harmonized, 3 skipped" in capsys.readouterr().out
    rows = json.loads((out / RECORD_NAME).read_text())["rows"]
    assert {r["site"]: r["model_source"] for r in rows if r["model"]} == {
        "siteB": "siteB",
        "siteC": "siteC",
    }


def test_one_model_and_an_unseen_site_warns(
    three_sites: SimpleNamespace,
    models: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = {r.subject: r for r in three_sites.records}
    csv = listing(
        tmp_path, [(s, images[s].site, images[s].image) for s in ("siteB-s0", "siteC-s2")]
    )
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert harmonize(["--csv", str(csv), "--model", str(models["b"]), "--out", str(out)]) == 0
    warned = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert [m for m in warned if "never saw" in m] == [f"{models['b'] / 'final.pt'} {UNSEEN_C}"]
    assert "2 file(s): 2 harmonized" in capsys.readouterr().out
    # Harmonized anyway, with the one model, and the record says so.
    rows = {r["subject"]: r for r in json.loads((out / RECORD_NAME).read_text())["rows"]}
    assert rows["siteC-s2"]["model_source"] == "siteB" and UNSEEN_C in rows["siteC-s2"]["message"]
    assert rows["siteB-s0"]["message"] == ""


def test_the_api_gives_the_same_warning(
    three_sites: SimpleNamespace, models: dict[str, Path]
) -> None:
    harmonizer = Harmonizer.load(models["b"], device="cpu")
    image = next(r.image for r in three_sites.records if r.site == "siteC")
    with pytest.warns(HarmonizeWarning, match=UNSEEN_C):
        harmonizer.harmonize(image, site="siteC")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        harmonizer.harmonize(image, site="siteB")
        harmonizer.harmonize(image)  # site unknown: no warning about it
    assert not [w for w in caught if "never saw" in str(w.message)]
    with pytest.warns(HarmonizeWarning, match="'siteA' is already the target site"):
        harmonizer.harmonize(image, site="siteA")


def test_several_models_and_an_unseen_site_are_refused(
    three_sites: SimpleNamespace,
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first = three_sites.records[3]
    csv = listing(
        tmp_path, [("x1", "siteD", first.image), ("x2", "siteB", three_sites.records[4].image)]
    )
    out = tmp_path / "out"
    argv = ["--csv", str(csv), "--model", str(models["b"]), "--model", str(models["c"])]
    assert harmonize([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no model was trained on site(s) siteD (1 row(s))" in err
    assert "(siteB -> siteA)" in err and "(siteC -> siteA)" in err
    assert not out.exists()  # refused before anything was written


def test_models_toward_different_targets_are_refused(
    three_sites: SimpleNamespace,
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"
    argv = ["--csv", str(three_sites.csv), "--model", str(models["b"]), "--model",
            str(models["cb"]), "--out", str(out)]  # fmt: skip
    assert harmonize(argv) == 2
    err = capsys.readouterr().err
    assert "translate toward different sites" in err
    assert "(siteB -> siteA)" in err and "(siteC -> siteB)" in err
    assert not out.exists()
    # Two models for one source site are refused too (one run named twice counts once).
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "final.pt").write_bytes((models["b"] / "final.pt").read_bytes())
    twice = ["--csv", str(three_sites.csv), "--model", str(models["b"]), "--model", str(copy),
             "--out", str(out)]  # fmt: skip
    assert harmonize(twice) == 2
    err = capsys.readouterr().err
    assert "two models translate site siteB to siteA" in err and str(copy) in err
    assert not out.exists()
    again = ["--csv", str(three_sites.csv), "--model", str(models["b"]), "--model",
             str(models["b"].parent), "--out", str(tmp_path / "again")]  # fmt: skip
    assert harmonize(again) == 0
    assert "6 harmonized, 3 skipped" in capsys.readouterr().out


def test_inputs_and_csv_together_are_refused(
    three_sites: SimpleNamespace,
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    image = str(three_sites.records[0].image)
    base = ["--model", str(models["b"]), "--out", str(tmp_path / "out")]
    assert harmonize([image, "--csv", str(three_sites.csv), *base]) == 2
    assert "not both and not neither" in capsys.readouterr().err
    assert harmonize(["--csv", str(three_sites.csv), "--model", f"axial={models['b']}",
                      "--out", str(tmp_path / "out")]) == 2  # fmt: skip
    assert "give --model RUN, not PLANE=RUN" in capsys.readouterr().err
    missing = tmp_path / "nothing"
    missing.mkdir()
    assert harmonize(["--csv", str(three_sites.csv), "--model", str(missing), "--out",
                      str(tmp_path / "out")]) == 2  # fmt: skip
    assert "neither a run" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_sites_with_the_same_file_names_write_a_folder_each(
    three_sites: SimpleNamespace,
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """site1/T1.nii.gz and site2/T1.nii.gz do not collide; target rows are planned nothing."""
    by_site = {r.site: r for r in three_sites.records}  # one subject per site
    rows = []
    for site, record in by_site.items():
        copy = tmp_path / "study" / site / "T1.nii.gz"
        copy.parent.mkdir(parents=True)
        copy.write_bytes(record.image.read_bytes())
        rows.append((f"{site}-x", site, copy))
    csv = listing(tmp_path, rows)
    out = tmp_path / "out"
    # A stale temporary of a killed run in a site folder is cleaned up.
    (out / "siteB").mkdir(parents=True)
    stale = out / "siteB" / ".T1.nii.gz.somehost-1.abcd1234.tmp"
    stale_name = stale.name.replace("somehost", _this_host()).replace("-1.", f"-{_dead_pid()}.")
    stale = stale.with_name(stale_name)
    stale.write_bytes(b"partial")
    argv = ["--csv", str(csv), "--model", str(models["b"]), "--model", str(models["c"]),
            "--out", str(out)]  # fmt: skip
    assert harmonize(argv) == 0
    assert "3 file(s): 2 harmonized, 1 skipped" in capsys.readouterr().out
    assert not stale.exists()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        RECORD_NAME, "siteB/T1.nii.gz", "siteC/T1.nii.gz",
    ]  # fmt: skip
    for site, model in (("siteB", models["b"]), ("siteC", models["c"])):
        written = np.asarray(nib.load(out / site / "T1.nii.gz").dataobj)
        np.testing.assert_allclose(written, expected(model, by_site[site].image), atol=1e-5)
    outputs = {r["site"]: r["output"] for r in json.loads((out / RECORD_NAME).read_text())["rows"]}
    assert outputs == {"siteA": None, "siteB": str(out / "siteB" / "T1.nii.gz"),
                       "siteC": str(out / "siteC" / "T1.nii.gz")}  # fmt: skip


def test_two_rows_of_a_site_with_one_file_name_are_refused(
    three_sites: SimpleNamespace,
    models: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    images = [r.image for r in three_sites.records if r.site == "siteB"][:2]
    rows = []
    for k, image in enumerate(images):
        copy = tmp_path / f"s{k}" / "T1.nii.gz"
        copy.parent.mkdir()
        copy.write_bytes(image.read_bytes())
        rows.append((f"s{k}", "siteB", copy))
    csv = listing(tmp_path, rows)
    out = tmp_path / "out"
    assert harmonize(["--csv", str(csv), "--model", str(models["b"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "subjects 's0'" in err and "'s1'" in err and "of site 'siteB' have the same file" in err
    assert f"collide in {out / 'siteB'}" in err
    assert not out.exists()


def test_site_folders_are_file_name_safe() -> None:
    from segrenorm.harmonize.sites import site_folder

    assert site_folder("Guy's Hospital") == "Guy_s_Hospital"
    assert site_folder("../etc") == ".._etc" and site_folder("..") == "_"
    assert site_folder("IOP-3T_v2.1") == "IOP-3T_v2.1"


def test_unfinished_runs_are_named_and_one_checkpoint_counts_once(
    three_sites: SimpleNamespace,
    models: dict[str, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from segrenorm.harmonize.sites import expand_models

    runs = tmp_path / "runs"
    runs.mkdir()
    for name in ("b", "c"):
        (runs / models[name].name).mkdir()
        (runs / models[name].name / "final.pt").write_bytes(
            (models[name] / "final.pt").read_bytes()
        )
    stopped = runs / "00009-stopped" / "checkpoints"
    stopped.mkdir(parents=True)
    (stopped / "last.pt").write_bytes((models["b"] / "final.pt").read_bytes())
    (runs / "notes").mkdir()  # not a run: not named
    found, notes = expand_models([runs])
    assert found == [runs / models["b"].name / "final.pt", runs / models["c"].name / "final.pt"]
    assert len(notes) == 1
    assert "skipped 1 unfinished run(s) without final.pt (00009-stopped)" in notes[0]
    # RUN and RUN/final.pt are one model, not two toward one site.
    b = models["b"]
    assert expand_models([b, b / "final.pt", str(b) + "/"]) == ([b / "final.pt"], [])
    out = tmp_path / "out"
    argv = ["--csv", str(three_sites.csv), "--model", str(runs), "--model",
            str(runs / models["b"].name / "final.pt"), "--out", str(out)]  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert harmonize(argv) == 0
    table = capsys.readouterr().out
    assert "6 harmonized, 3 skipped" in table
    assert "skipped 1 unfinished run(s) without final.pt (00009-stopped)" in table


def _this_host() -> str:
    from segrenorm.atomic import _host

    return _host()


def _dead_pid() -> int:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)
