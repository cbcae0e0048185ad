"""End-to-end tests of ``segrenorm prepare`` on tiny NIfTI volumes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segrenorm.cli import main
from segrenorm.data.manifest import open_manifest
from segrenorm.volumes.bias import DEFAULT_BIAS_CORRECTION, BiasCorrection
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.readwrite import save_image, save_label

SHAPE = (20, 24, 16)
LABELLED = ["--site-a", "a", "--site-b", "b", "--labels-a", "a/*dseg*", "--labels-b", "b/*dseg*"]


def _write_site(folder: Path, n: int, scale: float, prefix: str) -> None:
    """``n`` subjects ``{prefix}{k}_T1w.nii.gz`` with ``{prefix}{k}_dseg.nii.gz`` labels."""
    grid = np.indices(SHAPE).astype(np.float64)
    radius = np.sqrt(((grid - np.array([9.5, 11.5, 7.5])[:, None, None, None]) ** 2).sum(axis=0))
    labels = (radius <= 7.0).astype(np.uint8) + (radius <= 4.0).astype(np.uint8)
    geometry = Geometry.from_affine(np.diag([1.5, 1.5, 2.0, 1.0]), SHAPE)
    folder.mkdir(parents=True)
    for k in range(n):
        rng = np.random.default_rng(k)
        data = np.abs(rng.normal(0.0, 5.0, SHAPE)) + labels * 300.0 * scale
        save_image(data, folder / f"{prefix}{k}_T1w.nii.gz", geometry=geometry)
        save_label(labels, folder / f"{prefix}{k}_dseg.nii.gz", geometry=geometry)


@pytest.fixture()
def sites(tmp_path: Path) -> Path:
    _write_site(tmp_path / "a", 3, 1.0, "sub-a")
    _write_site(tmp_path / "b", 3, 3.0, "sub-b")
    return tmp_path


def test_prepare_from_folders(sites: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = sites / "cache"
    argv = [
        "prepare",
        "--site-a", str(sites / "a" / "*_T1w.nii.gz"),
        "--site-b", str(sites / "b" / "*_T1w.nii.gz"),
        "--labels-a", str(sites / "a" / "*_dseg.nii.gz"),
        "--labels-b", str(sites / "b" / "*_dseg.nii.gz"),
        "--sites", "1.5T", "3T",
        "--out", str(out),
        "--quiet",
    ]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "axial slices 32x32, 3 classes, bias-corrected (n4, shrink 4)" in stdout
    assert "A (1.5T): train" in stdout and "B (3T): train" in stdout
    manifest = open_manifest(out)
    assert manifest["sites"] == {"A": "1.5T", "B": "3T"}
    assert {s["subject"] for s in manifest["subjects"]} == {f"sub-a{k}" for k in range(3)} | {
        f"sub-b{k}" for k in range(3)
    }
    assert manifest["bias_correction"] == DEFAULT_BIAS_CORRECTION.to_dict()  # N4, shrink 4

    # A second run onto the same folder is refused without --overwrite, with a one-line error.
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("segrenorm prepare: error: ") and "already exists" in err
    options = ["--overwrite", "--axis", "coronal", "--spacing", "3", "3", "4", "--no-mask"]
    assert main([*argv, *options, "--bias-correction", "none", "--bias-shrink", "2"]) == 0
    manifest = open_manifest(out)
    assert manifest["slice_axis"] == "coronal" and manifest["spacing"] == [3.0, 3.0, 4.0]
    assert manifest["use_mask"] is False
    assert BiasCorrection.from_dict(manifest["bias_correction"]) == BiasCorrection("none", 2)
    assert main([*argv, "--overwrite", "--bias-shrink", "2"]) == 0
    stored = open_manifest(out)["bias_correction"]
    assert BiasCorrection.from_dict(stored) == BiasCorrection("n4", shrink=2)
    assert manifest["subjects"][0]["n_slices"] == 12  # 24 * 1.5 / 3 coronal slices, none skipped


def test_prepare_from_csv(sites: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["subject,site,image,label,split"]
    for site in ("a", "b"):
        for k in range(3):
            split = "test" if k == 0 else "train"
            rows.append(
                f"s{k},{site},{site}/sub-{site}{k}_T1w.nii.gz,{site}/sub-{site}{k}_dseg.nii.gz,{split}"
            )
    listing = sites / "subjects.csv"
    listing.write_text("\n".join(rows) + "\n")
    out = sites / "cache"
    code = main(
        ["prepare", "--csv", str(listing), "--sites", "b", "a", "--out", str(out), "--quiet"]
    )
    assert code == 0
    summary = capsys.readouterr().out.splitlines()
    assert summary[1].startswith("  A (b): train ") and summary[2].startswith("  B (a): train ")
    assert all(line.endswith("slices / 1 subjects") for line in summary[1:])
    assert all("slices / 2 subjects, test" in line for line in summary[1:])
    manifest = open_manifest(out)
    assert manifest["sites"] == {"A": "b", "B": "a"}
    assert [(s["site"], s["subject"], s["split"]) for s in manifest["subjects"][:3]] == [
        ("A", "s0", "test"), ("A", "s1", "train"), ("A", "s2", "train")
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no subjects given: pass --csv LISTING, or both --site-a and --site-b"),
        (["--csv", "x.csv", "--site-a", "a"], "give either --csv LISTING or --site-a/--site-b"),
        (["--csv", "missing.csv"], "subject listing missing.csv does not exist"),
        (["--site-a", "a/*T1w*", "--site-b", "nowhere"], "nowhere: no such file or folder"),
        (["--site-a", "a", "--site-b", "b"], "a/sub-a0_dseg.nii.gz both have subject id 'sub-a0'"),
        ([*LABELLED, "--test-fraction", "1.5"], "test_fraction 1.5 must be in [0, 1)"),
        ([*LABELLED, "--val-fraction", "1"], "val_fraction 1.0 must be in [0, 1)"),
        ([*LABELLED, "--val-fraction", "0.7"], "val_fraction 0.7 + test_fraction 0.3 must stay"),
        (
            [*LABELLED, "--val-fraction", "0.5"],
            "site 'A' has 3 subject(s) without a listed split: drawing 1 test (test_fraction 0.3) "
            "and 2 val (val_fraction 0.5) would leave the train split empty; lower the val "
            "fraction (--val-fraction",
        ),
        ([*LABELLED, "--n-classes", "2"], "label values 2 fall outside the classes 0..1"),
        ([*LABELLED, "--bias-shrink", "9"], "bias-correction shrink=9 must be 1 to 8"),
    ],
)
def test_prepare_usage_errors(
    sites: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(sites)
    assert main(["prepare", "--out", "cache", "--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segrenorm prepare: error: ")
    assert message in err
    assert not (sites / "cache").exists()


def test_unknown_bias_correction_is_a_usage_error(
    sites: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["prepare", "--out", str(sites / "cache"), "--bias-correction", "n3"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "argument --bias-correction: invalid choice: 'n3'" in err and "n4" in err


def test_bad_volume_fails_cleanly(sites: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = sites / "b" / "sub-b9_T1w.nii.gz"
    broken.write_bytes(b"not a nifti file")
    argv = ["prepare", "--site-a", str(sites / "a" / "*_T1w*"), "--site-b"]
    assert main([*argv, str(sites / "b" / "*_T1w*"), "--out", str(sites / "cache"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sub-b9_T1w.nii.gz" in err
    assert not (sites / "cache").exists()
    assert [p.name for p in sites.iterdir() if p.name.startswith(".")] == []
