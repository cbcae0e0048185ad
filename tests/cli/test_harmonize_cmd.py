"""Tests for ``segrenorm harmonize``: folders, failures, safety, --skip-existing, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

import segrenorm
from segrenorm.cli import main
from segrenorm.cli.harmonize_cmd import parse_models
from segrenorm.errors import ConfigError, InputError
from segrenorm.harmonize.files import FileResult, plan_outputs, summary_table
from segrenorm.harmonize.harmonizer import Harmonizer
from segrenorm.models.checkpoint import load_checkpoint

Phantom = Callable[..., Path]


def test_folder_with_an_unreadable_file(
    tiny_checkpoints: dict[str, Path],
    write_phantom: Phantom,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    good = [write_phantom("a.nii.gz"), write_phantom("c.nii.gz", seed=1)]
    broken = tmp_path / "in" / "b.nii.gz"
    broken.write_bytes(good[0].read_bytes()[:300])  # truncated download
    before = {p: p.read_bytes() for p in [*good, broken]}
    out = tmp_path / "out"
    argv = ["harmonize", str(tmp_path / "in"), "--model", str(tiny_checkpoints["identity"])]
    code = main([*argv, "--out", str(out), "--no-progress"])
    assert code == 1
    table = capsys.readouterr().out
    assert "3 file(s): 2 harmonized, 0 skipped, 1 failed" in table
    assert "b.nii.gz  failed" in table and "truncated or corrupt" in table
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "c.nii.gz"]
    written = nib.load(out / "a.nii.gz")
    np.testing.assert_allclose(written.affine, nib.load(good[0]).affine)
    assert written.get_data_dtype() == np.float32
    assert all(p.read_bytes() == data for p, data in before.items())  # inputs untouched
    # A second run: existing outputs are refused per file unless skipped.
    assert main([*argv, "--out", str(out), "--no-progress"]) == 1
    assert "exists; pass --skip-existing" in capsys.readouterr().out
    assert main([*argv, "--out", str(out), "--no-progress", "--skip-existing"]) == 1
    assert "2 skipped, 1 failed" in capsys.readouterr().out
    broken.unlink()
    assert main([*argv, "--out", str(out), "--skip-existing", "--dtype", "input"]) == 0


def test_output_folder_equal_to_input_folder_is_refused(
    tiny_checkpoints: dict[str, Path],
    write_phantom: Phantom,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = write_phantom()
    before = path.read_bytes()
    model = str(tiny_checkpoints["identity"])
    argv = ["harmonize", str(path), "--model", model, "--out", str(path.parent), "--overwrite"]
    assert main(argv) == 2
    assert "is the folder the input volumes are in" in capsys.readouterr().err
    assert path.read_bytes() == before
    with pytest.raises(InputError, match=r"--out .*\.\./in is the folder the input"):
        plan_outputs([path], path.parent / ".." / "in")


def test_plan_refuses_name_collisions_and_file_outputs(
    write_phantom: Phantom, tmp_path: Path
) -> None:
    one = write_phantom("x.nii.gz", folder=tmp_path / "s1")
    two = write_phantom("x.nii.gz", folder=tmp_path / "s2")
    with pytest.raises(InputError, match=r"s1/x\.nii\.gz and .*s2/x\.nii\.gz have the same"):
        plan_outputs([one, two], tmp_path / "out")
    (tmp_path / "afile").write_text("")
    with pytest.raises(InputError, match=r"--out .*afile is a file"):
        plan_outputs([one], tmp_path / "afile")
    assert plan_outputs([one], tmp_path / "o") == [(one, tmp_path / "o" / "x.nii.gz")]


def test_parse_models_and_per_view_cli(
    tiny_checkpoints: dict[str, Path], write_phantom: Phantom, tmp_path: Path
) -> None:
    assert parse_models(["run"]) == "run"
    assert parse_models(["axial=r1", "coronal=r2"]) == {"axial": "r1", "coronal": "r2"}
    with pytest.raises(ConfigError, match="give one model, or one PLANE=RUN per view"):
        parse_models(["r1", "coronal=r2"])
    with pytest.raises(ConfigError, match=r"names a plane twice \(axial, axial\)"):
        parse_models(["axial=r1", "axial=r2"])
    path = write_phantom()
    ckpt = tiny_checkpoints["random"]
    argv = ["harmonize", str(path), "--out", str(tmp_path / "o"), "--no-progress"]
    views = ["--model", f"axial={ckpt}", "--model", f"sagittal={ckpt}"]
    assert main([*argv, *views]) == 0
    fused = Harmonizer.load(ckpt, views="axial,sagittal").harmonize(path).data
    np.testing.assert_allclose(nib.load(tmp_path / "o" / path.name).get_fdata(), fused, atol=1e-3)
    assert main([*argv, *views, "--views", "axial"]) == 2


def test_summary_table_lists_every_file() -> None:
    rows = [
        FileResult(Path("/a/x.nii.gz"), Path("/o/x.nii.gz"), "ok", 1.25, "resampled"),
        FileResult(Path("/a/y.nii.gz"), Path("/o/y.nii.gz"), "failed", 0.1, "z" * 100),
    ]
    table = summary_table(rows, width=40)
    assert "x.nii.gz  ok" in table and "1.2" in table and "(warning: resampled)" in table
    assert "z" * 39 + "…" in table and "z" * 41 not in table
    assert table.endswith("2 file(s): 1 harmonized, 0 skipped, 1 failed")


def test_trained_checkpoint_carries_what_harmonize_needs(
    write_phantom: Phantom, tiny_kit: SimpleNamespace, tmp_path: Path
) -> None:
    cache = tiny_kit.cache(tmp_path / "cache")
    manifest = json.loads((cache / "manifest.json").read_text())
    for subject, (low, high) in zip(manifest["subjects"], [(10, 90), (30, 300)], strict=True):
        subject["scaling"] = {"low": low, "high": high, "lower_pct": 0.5, "upper_pct": 99.5}
    (cache / "manifest.json").write_text(json.dumps(manifest))
    config = tiny_kit.config(
        optim={"iterations": 2, "decay_iterations": 0, "warmup_iterations": 0},
        run={"checkpoint_every": 0, "image_every": 0},
    )
    run_dir = segrenorm.train(config, cache, tmp_path / "runs", progress=False)
    facts = load_checkpoint(run_dir / "final.pt")["cache_info"]["inference"]
    assert facts["slice_axis"] == "axial" and facts["spacing"] == [1.0, 1.0, 1.0]
    assert facts["scaling"]["B"]["high"] == 300.0
    out = segrenorm.Harmonizer.load(run_dir).harmonize(write_phantom(spacing=1.0))
    assert float(out.data[out.data > 0].min()) > 29 and float(out.data.max()) < 301


def test_torchrun_shards_files_across_two_ranks(
    tiny_checkpoints: dict[str, Path], write_phantom: Phantom, tmp_path: Path
) -> None:
    for i in range(3):
        write_phantom(f"s{i}.nii.gz", seed=i)
    src = str(Path(segrenorm.__file__).resolve().parents[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--standalone", "-m", "segrenorm", "harmonize", str(tmp_path / "in"),
               "--model", str(tiny_checkpoints["identity"]), "--out", str(tmp_path / "out"),
               "--device", "cpu"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "s0.nii.gz", "s1.nii.gz", "s2.nii.gz"
    ]  # fmt: skip
    assert done.stdout.count("3 file(s): 3 harmonized") == 1  # rank 0 alone prints
    assert "[rank 1] [1/1]" in done.stderr and "[rank 0] [2/2]" in done.stderr
