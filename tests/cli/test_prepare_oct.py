"""``segrenorm prepare --modality oct``: the OCT defaults, its refusals, and a dataset layout's
modality as the default (the OCT phantoms of tests/data/test_prepare.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from segrenorm.cli import main, prepare_cmd
from segrenorm.data.manifest import open_manifest
from tests.data.test_prepare import write_oct_study


def _oct_csv(root: Path) -> Path:
    """A listing of the two vendors' OCT phantoms (tests/data/test_prepare.py)."""
    rows = ["subject,site,image,label"]
    for record in write_oct_study(root):
        rows.append(f"{record.subject},{record.site},{record.image},{record.label}")
    listing = root / "oct.csv"
    listing.write_text("\n".join(rows) + "\n")
    return listing


OCT_QUICK = ["--n-classes", "4", "--min-foreground", "0", "--val-fraction", "0",
             "--test-fraction", "0", "--quiet"]  # fmt: skip


def test_prepare_oct_defaults_to_no_bias_correction_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cache"
    argv = ["prepare", "--csv", str(_oct_csv(tmp_path)), "--out", str(out), *OCT_QUICK]
    assert main([*argv, "--modality", "oct"]) == 0
    stdout = capsys.readouterr().out
    assert "OCT (retina mask, background kept) axial slices 32x48, 4 classes" in stdout
    assert "bias-corrected" not in stdout
    manifest = open_manifest(out)
    assert manifest["modality"] == "oct" and manifest["bias_correction"]["method"] == "none"
    # Without --modality the same listing is MRI, N4-corrected: the option is what changed.
    assert main([*argv, "--overwrite", "--bias-shrink", "2"]) == 0
    manifest = open_manifest(out)
    assert manifest["modality"] == "mri" and manifest["bias_correction"]["method"] == "n4"


def test_prepare_oct_refuses_n4_and_unknown_modalities(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["prepare", "--csv", str(_oct_csv(tmp_path)), "--out", str(tmp_path / "cache")]
    assert main([*argv, *OCT_QUICK, "--modality", "oct", "--bias-correction", "n4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("segrenorm prepare: error: --bias-correction n4 with --modality oct")
    assert "OCT takes --bias-correction none (or leave the option out)" in err
    assert not (tmp_path / "cache").exists()
    with pytest.raises(SystemExit) as stopped:
        main([*argv, "--modality", "ct"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "argument --modality: invalid choice: 'ct' (choose from mri, oct)" in err.replace(
        "'mri', 'oct'", "mri, oct"
    )


def test_a_datasets_modality_is_the_default_and_a_contradiction_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    records = write_oct_study(tmp_path)

    def layout(name: str, root: str, **_: object) -> SimpleNamespace:
        names = ("background", "IRF", "SRF", "PED")
        return SimpleNamespace(records=records, notes=(), class_names=names, modality="oct")

    monkeypatch.setattr(prepare_cmd, "records_from_layout", layout)
    out = tmp_path / "cache"
    argv = ["prepare", "--dataset", "retouch", str(tmp_path), "--out", str(out), *OCT_QUICK[2:]]
    assert main(argv) == 0
    assert open_manifest(out)["modality"] == "oct"  # the layout's, without --modality
    assert open_manifest(out)["class_names"] == ["background", "IRF", "SRF", "PED"]
    capsys.readouterr()
    assert main([*argv, "--overwrite", "--modality", "mri"]) == 2
    err = capsys.readouterr().err
    assert "--modality mri contradicts --dataset retouch, which holds oct volumes" in err
