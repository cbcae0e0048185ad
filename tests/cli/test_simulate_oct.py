"""``segrenorm simulate oct`` through the command line: files, listing, stored volumes, errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segrenorm.cli import main

VENDORS = ("Cirrus", "Spectralis")
# Table II grids times 0.03 (at least 8 voxels per axis), fields of view kept, in mm.
SHAPES = {"Cirrus": (15, 31, 8), "Spectralis": (8, 15, 8)}
FOV = {"Cirrus": (6.0, 1.984, 6.0), "Spectralis": (6.0, 1.984, 6.0)}


@pytest.fixture(scope="module")
def oct_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("oct") / "oct"
    argv = ["simulate", "oct", "--out", str(out), "--subjects-per-vendor", "1",
            "--scale", "0.03", "--test-fraction", "0.2", "--val-fraction", "0.2",
            "--seed", "1", "--workers", "1"]  # fmt: skip
    assert main(argv) == 0
    return out


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "subjects.csv").open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_cli_writes_the_listed_files(oct_dir: Path) -> None:
    rows = _rows(oct_dir)
    assert list(rows[0]) == ["subject", "site", "image", "label", "split", "clean", "retina"]
    # 1 training subject per vendor; 2 / 0.6 subjects: 1 test, 1 validation on both vendors.
    assert [(r["site"], r["split"]) for r in rows].count(("Cirrus", "train")) == 1
    assert len(rows) == 2 * 1 + 2 * 2
    written = {str(p.relative_to(oct_dir)) for p in oct_dir.rglob("*") if p.is_file()}
    listed = {"subjects.csv", "simulation.json"}
    for row in rows:
        sid, site = row["subject"], row["site"]
        assert row["image"] == f"images/{site}/{sid}_oct.nii.gz"
        assert row["label"] == f"labels/{site}/{sid}_fluid.nii.gz"
        assert row["retina"] == f"labels/{site}/{sid}_retina.nii.gz"
        held_out = row["split"] != "train"
        assert row["clean"] == (f"images/{site}-clean/{sid}_oct.nii.gz" if held_out else "")
        listed |= {row[k] for k in ("image", "label", "retina", "clean") if row[k]}
    assert written == listed
    held = {s: {r["subject"] for r in rows if r["site"] == s and r["split"] != "train"}
            for s in VENDORS}  # fmt: skip
    train = {s: {r["subject"] for r in rows if r["site"] == s and r["split"] == "train"}
             for s in VENDORS}  # fmt: skip
    assert held["Cirrus"] == held["Spectralis"] and len(held["Cirrus"]) == 2
    assert not train["Cirrus"] & train["Spectralis"]
    meta = json.loads((oct_dir / "simulation.json").read_text(encoding="utf-8"))
    assert meta["labels"] == {"0": "background", "1": "IRF", "2": "SRF", "3": "PED"}
    for subject, pockets in meta["pockets"].items():
        assert set(pockets) == {"IRF", "SRF", "PED"}, subject
        for record in pockets.values():
            assert record["count"] == len(record["volumes_mm3"])


def test_stored_volumes_are_int16_with_the_stated_affine(oct_dir: Path) -> None:
    for row in _rows(oct_dir):
        site = row["site"]
        image = nib.load(str(oct_dir / row["image"]))
        data = np.asarray(image.dataobj)
        assert data.dtype == np.int16 and data.shape == SHAPES[site]
        spacing = np.array(FOV[site]) / np.array(SHAPES[site])
        np.testing.assert_allclose(image.affine, np.diag([*spacing, 1.0]), rtol=1e-6)
        levels = 255 if site == "Cirrus" else 32767
        assert data.min() >= 0 and data.max() <= levels
        labels = np.asarray(nib.load(str(oct_dir / row["label"])).dataobj)
        retina = np.asarray(nib.load(str(oct_dir / row["retina"])).dataobj)
        assert labels.shape == retina.shape == SHAPES[site]
        assert set(np.unique(labels)) <= {0, 1, 2, 3} and set(np.unique(retina)) <= {0, 1}
        assert not (labels[retina == 0]).any()  # fluid lies inside the retina
        # The retina is brighter than the vitreous above it on every vendor.
        assert data[retina == 1].mean() > data[:, :2, :].mean()


def test_cli_reports_a_bad_vendor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "oct", "--out", str(tmp_path / "x"), "--vendors", "Cirrus", "Topcon"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (
        "segrenorm simulate: error: unknown OCT vendor 'Topcon': use one of Cirrus, "
        "Spectralis or the path of an existing .yaml/.json vendor file" in err
    )
    assert not (tmp_path / "x").exists()
    assert main(["simulate", "oct", "--out", str(tmp_path / "x"), "--scale", "0"]) == 2
    assert "scale=0.0 must lie in (0, 1]" in capsys.readouterr().err
