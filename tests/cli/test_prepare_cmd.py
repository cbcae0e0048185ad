"""End-to-end tests of ``segrenorm prepare`` on tiny NIfTI volumes: the input routes (CSV,
two or N sites' folders, the IXI and BIDS layouts) and their bad-input paths."""

from __future__ import annotations

from collections.abc import Callable
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
#: Quick, small-study options: no N4, no val split, the volumes' own grid.
QUICK = ["--bias-correction", "none", "--val-fraction", "0", "--spacing", "1.5", "1.5", "2",
         "--quiet"]  # fmt: skip


def _write_subject(image: Path, label: Path | None, scale: float, seed: int) -> None:
    """A noisy two-tissue ball at 1.5 x 1.5 x 2 mm and its labels (0, 1 shell, 2 core)."""
    grid = np.indices(SHAPE).astype(np.float64)
    radius = np.sqrt(((grid - np.array([9.5, 11.5, 7.5])[:, None, None, None]) ** 2).sum(axis=0))
    labels = (radius <= 7.0).astype(np.uint8) + (radius <= 4.0).astype(np.uint8)
    geometry = Geometry.from_affine(np.diag([1.5, 1.5, 2.0, 1.0]), SHAPE)
    data = np.abs(np.random.default_rng(seed).normal(0.0, 5.0, SHAPE)) + labels * 300.0 * scale
    image.parent.mkdir(parents=True, exist_ok=True)
    save_image(data, image, geometry=geometry)
    if label is not None:
        label.parent.mkdir(parents=True, exist_ok=True)
        save_label(labels, label, geometry=geometry)


def _write_site(folder: Path, n: int, scale: float, prefix: str) -> None:
    """``n`` subjects ``{prefix}{k}_T1w.nii.gz`` with ``{prefix}{k}_dseg.nii.gz`` labels."""
    folder.mkdir(parents=True)
    for k in range(n):
        _write_subject(
            folder / f"{prefix}{k}_T1w.nii.gz", folder / f"{prefix}{k}_dseg.nii.gz", scale, k
        )


def _no_leftovers(root: Path) -> None:
    """No cache and no hidden temporary folder anywhere under ``root``."""
    assert not (root / "cache").exists()
    assert [p for p in root.rglob(".*") if p.name.startswith(".cache")] == []


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
        "--val-fraction", "0",
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
    assert manifest["headroom"] == 0.0  # no headroom outside --dataset msseg

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
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--bias-correction", "none", "--headroom", "0.25"]) == 0
    assert open_manifest(out)["headroom"] == 0.25
    assert "axial slices 32x32, 3 classes, headroom 0.25, grid" in capsys.readouterr().out
    assert main([*argv, "--overwrite", "--headroom", "-0.5"]) == 2
    err = capsys.readouterr().err
    assert "headroom -0.5 must be between 0 and 10" in err
    assert open_manifest(out)["headroom"] == 0.25  # the refused run left the cache as it was


def test_prepare_from_csv(sites: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["subject,site,image,label,split"]
    for site in ("a", "b"):
        for k in range(3):
            split = "test" if k == 0 else "train"
            rows.append(
                f"{site}-s{k},{site},{site}/sub-{site}{k}_T1w.nii.gz,"
                f"{site}/sub-{site}{k}_dseg.nii.gz,{split}"
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
        ("A", "b-s0", "test"), ("A", "b-s1", "train"), ("A", "b-s2", "train")
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "no subjects given: pass --csv LISTING, --dataset NAME ROOT, one --site NAME PATH"),
        (["--csv", "x.csv", "--site-a", "a"], "give the subjects one way, not --csv and --site-a"),
        (["--csv", "x.csv", "--dataset", "ixi", "a"], "one way, not --csv and --dataset: --csv"),
        (["--site", "x", "a", "--labels-b", "b"], "not --site and --site-a/--site-b: --csv"),
        (["--site", "x"], "--site takes a site name and then its files: --site NAME PATH [PATH"),
        (["--site", "x", "a", "--site", "y", "b", "--labels", "y"], "got only 'y'"),
        (["--site", "x", "a", "--site", "x", "b"], "site name(s) ['x'] given more than once"),
        (
            [
                "--site",
                "x",
                "a/*T1w*",
                "--site",
                "y",
                "b/*T1w*",
                "--labels",
                "x",
                "a/*dseg*",
                "--labels",
                "x",
                "a/*dseg*",
            ],
            "--labels given more than once for site(s) ['x']",
        ),
        (["--site", "x", "a", "--site", "y", "b", "--labels", "z", "b"], "labels given for site"),
        (["--csv", "x.csv", "--labels", "x", "a"], "--labels goes with --site or --dataset; a CSV"),
        (["--site", "x", "a", "--site-column", "s"], "--site-column goes with --dataset bids"),
        (["--site", "x", "a", "--sites", "x"], "--sites goes with --csv, --dataset or --site-a"),
        (["--dataset", "ixi", "a", "--labels", "a", "b"], "give --labels once, with one folder"),
        (["--dataset", "adni", "a"], "dataset layout 'adni' is unknown; known layouts: ixi, bids"),
        # A forgotten site name: the first file (a shell-expanded glob) is not taken as one.
        (
            ["--site", "a/sub-a0_T1w.nii.gz", "a/sub-a1_T1w.nii.gz", "--site", "y", "b"],
            "--site a/sub-a0_T1w.nii.gz ...: 'a/sub-a0_T1w.nii.gz' looks like a file, not a site "
            "name; give the site's name first: --site NAME PATH [PATH ...] (e.g. --site guys ",
        ),
        (["--site", "x", "a", "--site", "sub-b0_T1w.nii", "b"], "'sub-b0_T1w.nii' looks like a"),
        (["--site", "x", "a", "--site", "notes", "b"], "'notes' looks like a file, not a site"),
        (
            ["--site", "x", "a", "--site", "y", "b", "--labels", "/data/b", "b"],
            "--labels /data/b ...: '/data/b' looks like a file",
        ),
        (["--site-a", "a"], "give both --site-a and --site-b (or one --site NAME PATH... per"),
        ([*LABELLED, "--sites", "p", "q", "r"], "give --sites two names, not ('p', 'q', 'r')"),
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
        ([*LABELLED, "--val-fraction", "0", "--n-classes", "2"], "label values 2 fall outside"),
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
    (sites / "notes").write_text("a file without an image suffix")
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
    argv = ["prepare", "--val-fraction", "0", "--site-a", str(sites / "a" / "*_T1w*"), "--site-b"]
    assert main([*argv, str(sites / "b" / "*_T1w*"), "--out", str(sites / "cache"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "sub-b9_T1w.nii.gz" in err
    assert not (sites / "cache").exists()
    assert [p.name for p in sites.iterdir() if p.name.startswith(".")] == []


def test_prepare_n_sites_from_folders_in_the_given_order(
    sites: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_site(sites / "c", 2, 2.0, "sub-c")
    out = sites / "cache"
    argv = ["prepare", "--out", str(out), *QUICK]
    for name in ("c", "a", "b"):
        argv += ["--site", f"site-{name}", str(sites / name / "*_T1w.nii.gz")]
        argv += ["--labels", f"site-{name}", str(sites / name / "*_dseg.nii.gz")]
    (sites / "site-a").mkdir()  # a name that is also a folder is still a name
    monkeypatch.chdir(sites)
    assert main(argv) == 0
    summary = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in summary[1:4]] == [
        "  A (site-c)", "  B (site-a)", "  C (site-b)"
    ]  # fmt: skip
    manifest = open_manifest(out)
    assert manifest["sites"] == {"A": "site-c", "B": "site-a", "C": "site-b"}
    by_site = {key: [s for s in manifest["subjects"] if s["site"] == key] for key in "ABC"}
    assert [len(by_site[key]) for key in "ABC"] == [2, 3, 3]
    assert all(
        s["label"] == s["image"].replace("_T1w", "_dseg") for s in manifest["subjects"]
    )  # paired by subject id
    for key, subjects in by_site.items():  # 0.3 x n rounded half up: one test subject each
        assert sorted(s["split"] for s in subjects).count("test") == 1, key


def _write_ixi(root: Path) -> Path:
    """An IXI-T1 folder (plus a T2 volume) at the three IXI sites, tissue labels beside it."""
    labels = root / "IXI-labels"
    for k, name in enumerate(["IXI002-Guys-0828", "IXI016-Guys-0697", "IXI012-HH-1211",
                              "IXI013-HH-1212", "IXI035-IOP-0873", "IXI036-IOP-0874"]):  # fmt: skip
        scale = {"Guys": 1.0, "HH": 2.0, "IOP": 3.0}[name.split("-")[1]]
        _write_subject(root / "IXI-T1" / f"{name}-T1.nii.gz",
                       labels / f"{name}-T1_seg.nii.gz", scale, k)  # fmt: skip
    _write_subject(root / "IXI-T1" / "IXI002-Guys-0828-T2.nii.gz", None, 1.0, 9)
    return labels


def test_prepare_dataset_ixi_gives_a_cache_of_the_three_sites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = _write_ixi(tmp_path)
    out = tmp_path / "cache"
    argv = ["prepare", "--dataset", "ixi", str(tmp_path / "IXI-T1"), "--labels", str(labels)]
    assert main([*argv, "--out", str(out), *QUICK]) == 0
    stdout = capsys.readouterr().out
    assert "A (Guys): train" in stdout and "B (HH): train" in stdout and "C (IOP): " in stdout
    assert stdout.rstrip().endswith("note: skipped 1 non-T1 IXI file(s) (T2 1)")
    manifest = open_manifest(out)
    assert manifest["sites"] == {"A": "Guys", "B": "HH", "C": "IOP"}
    assert [(s["site"], s["subject"]) for s in manifest["subjects"]] == [
        ("A", "IXI002"), ("A", "IXI016"), ("B", "IXI012"), ("B", "IXI013"), ("C", "IXI035"),
        ("C", "IXI036"),
    ]  # fmt: skip
    assert manifest["has_labels"] is True and manifest["n_classes"] == 3
    for subject in manifest["subjects"]:
        assert Path(subject["label"]).name == Path(subject["image"]).name.replace(
            "-T1.nii.gz", "-T1_seg.nii.gz"
        )


def test_prepare_dataset_bids_with_a_site_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "ds001"
    rows = ["participant_id\tage\tscanner"]
    for k, scanner in enumerate(["prisma", "prisma", "skyra", "skyra"]):
        sub = f"sub-{k + 1:02d}"
        rows.append(f"{sub}\t{30 + k}\t{scanner}")
        session = "ses-1/" if k == 3 else ""
        stem = f"{sub}_ses-1" if k == 3 else sub
        _write_subject(
            root / sub / f"{session}anat" / f"{stem}_T1w.nii.gz",
            root / "derivatives" / "seg" / sub / f"{session}anat" / f"{stem}_dseg.nii.gz",
            1.0 + k,
            k,
        )
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "cache"
    argv = ["prepare", "--dataset", "bids", str(root), "--site-column", "scanner"]
    assert main([*argv, "--out", str(out), *QUICK]) == 0
    assert "A (prisma): train" in capsys.readouterr().out
    manifest = open_manifest(out)
    assert manifest["sites"] == {"A": "prisma", "B": "skyra"}
    assert [(s["site"], s["subject"]) for s in manifest["subjects"]] == [
        ("A", "sub-01"), ("A", "sub-02"), ("B", "sub-03"), ("B", "sub-04_ses-1")
    ]  # fmt: skip
    assert all("/derivatives/seg/" in s["label"] for s in manifest["subjects"])
    # The default site column is absent: the error lists the columns the file has.
    assert main([*argv[:4], "--out", str(out), "--overwrite", *QUICK]) == 2
    err = capsys.readouterr().err
    assert "no column 'site'; it has the columns participant_id, age, scanner" in err


def _csv(root: Path, rows: list[str], header: str = "subject,site,image,label") -> list[str]:
    (root / "bad.csv").write_text("\n".join([header, *rows]) + "\n")
    return ["--csv", "bad.csv"]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        # The same folder as both sites: every subject would train against itself.
        (
            lambda root: ["--site-a", "a/*T1w*", "--site-b", "a/*T1w*"],
            "the same image file is listed more than once, so a subject would train against "
            "itself: sites 'A' and 'B' are given the same files (3 image(s), e.g. "
            "{root}/a/sub-a0_T1w.nii.gz). Give each site its own files",
        ),
        (
            lambda root: ["--site", "x", "a/*T1w*", "--site", "y", "b/*T1w*", "--site", "z",
                          "a/sub-a1_T1w.nii.gz"],
            "every image of site 'z' is also given to site 'x' (1 image(s), e.g. "
            "{root}/a/sub-a1_T1w.nii.gz)",
        ),
        # One subject id at two sites, different files, not a held-out travelling subject.
        (
            lambda root: _csv(root, ["s1,A,a/sub-a0_T1w.nii.gz,", "s2,A,a/sub-a1_T1w.nii.gz,",
                                     "s1,B,b/sub-b0_T1w.nii.gz,", "s3,B,b/sub-b1_T1w.nii.gz,"]),
            "one subject id at two sites: subject 's1' is at site 'A' "
            "({root}/a/sub-a0_T1w.nii.gz) and at site 'B' ({root}/b/sub-b0_T1w.nii.gz). Rename",
        ),
        # Too few subjects for the default val fraction (3 x 0.15 rounds to 0).
        (
            lambda root: ["--site-a", "a/*T1w*", "--site-b", "b/*T1w*", "--val-fraction", "0.15"],
            "site 'A' has 3 subject(s) without a listed split, too few for the requested val "
            "split (--val-fraction 0.15): it rounds to 0 subjects, so the val split would be "
            "empty at this site. Add subjects to the site, raise the fraction, pass "
            "--val-fraction 0 for no val split, or list each subject's split in a CSV 'split' "
            "column (--csv)",
        ),
        (
            lambda root: [*_csv(root, ["s1,A,a/sub-a0_T1w.nii.gz", "s2,B,b/sub-b0_T1w.nii.gz"]),
                          "--val-fraction", "0"],
            "site 'A' has only one subject without a listed split: it must train, so the "
            "requested test split (--test-fraction 0.3) would be empty at this site. Add "
            "subjects to the site, pass --test-fraction 0 for no test split, or list",
        ),
        # A CSV with missing columns, or several bad rows: one error lists every bad row.
        (
            lambda root: _csv(root, ["s1,a/sub-a0_T1w.nii.gz"], header="subject,path"),
            "error: bad.csv: missing column(s) site, image (the header has subject, path); the "
            "header must list subject,site,image[,label][,split][,clean]",
        ),
        (
            lambda root: _csv(root, ["s1,A,a/sub-a0_T1w.nii.gz,", "s1,A,a/sub-a0_T1w.nii.gz,",
                                     "s2,B,b/nowhere.nii.gz,", "s3,B,b/sub-b1_T1w.nii.gz,b/x.nii",
                                     "s4,,,"]),
            "error: bad.csv: 4 bad row(s); fix them and run again: line 3: subject 's1' is "
            "listed twice for site 'A' (first at line 2); line 4: image file "
            "{root}/b/nowhere.nii.gz does not exist; line 5: label file {root}/b/x.nii does "
            "not exist; line 6: empty value for site, image",
        ),
    ],
)  # fmt: skip
def test_bad_listings_fail_cleanly(
    sites: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    inputs: Callable[[Path], list[str]],
    message: str,
) -> None:
    monkeypatch.chdir(sites)
    argv = ["prepare", *inputs(sites), "--out", "cache", "--bias-correction", "none", "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("segrenorm prepare: error: ")
    assert message.format(root=sites) in err
    _no_leftovers(sites)
