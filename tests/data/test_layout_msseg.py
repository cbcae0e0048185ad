"""Tests of the MS-SEG 2016 layout (segrenorm.data.layout_msseg) on miniature trees built here.

The trees use the challenge's own names: ``Training/Center_XX/Patient_YY/`` with
``Preprocessed_Data/FLAIR_preprocessed.nii.gz`` and ``Masks/Consensus.nii.gz``. The layout reads
names, so most trees hold empty files; the CLI run writes real tiny volumes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segrenorm.cli import main
from segrenorm.data.layout_msseg import MSSEG_CLASSES
from segrenorm.data.layouts import DATASET_LAYOUTS, records_from_layout
from segrenorm.data.manifest import open_manifest
from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.readwrite import save_image, save_label

FLAIR = "Preprocessed_Data/FLAIR_preprocessed.nii.gz"
CONSENSUS = "Masks/Consensus.nii.gz"
PATIENTS = ["Center_01/Patient_01", "Center_01/Patient_02", "Center_07/Patient_01",
            "Center_07/Patient_02", "Center_08/Patient_01", "Center_08/Patient_02"]  # fmt: skip


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def _tree(root: Path, patients: list[str] = PATIENTS) -> Path:
    """An MS-SEG download: ``root/Training/<patient>/`` with the FLAIR, the consensus and the
    files the layout does not read (other modalities, the seven raters' masks)."""
    for patient in patients:
        folder = f"Training/{patient}/"
        _touch(root, folder + FLAIR, folder + CONSENSUS,
               folder + "Masks/ManualSegmentation_1.nii.gz",
               folder + "Preprocessed_Data/T1_preprocessed.nii.gz",
               folder + "Raw_Data/FLAIR.nii.gz")  # fmt: skip
    return root


def test_msseg_is_registered() -> None:
    assert "msseg" in DATASET_LAYOUTS


def test_msseg_reads_centres_as_sites_and_consensus_as_labels(tmp_path: Path) -> None:
    root = _tree(tmp_path / "MSSEG-2016")
    listing = records_from_layout("msseg", root)
    assert [(r.subject, r.site) for r in listing.records] == [
        ("Center_01_Patient_01", "Center_01"), ("Center_01_Patient_02", "Center_01"),
        ("Center_07_Patient_01", "Center_07"), ("Center_07_Patient_02", "Center_07"),
        ("Center_08_Patient_01", "Center_08"), ("Center_08_Patient_02", "Center_08"),
    ]  # fmt: skip
    training = root / "Training"
    assert [r.image for r in listing.records] == [
        (training / p / FLAIR).resolve() for p in PATIENTS
    ]
    assert [r.label for r in listing.records] == [
        (training / p / CONSENSUS).resolve() for p in PATIENTS
    ]
    assert all(r.split is None and r.group is None for r in listing.records)
    assert listing.class_names == MSSEG_CLASSES == ("background", "lesion")
    assert listing.notes == ()


def test_msseg_root_may_be_the_training_folder_itself(tmp_path: Path) -> None:
    root = _tree(tmp_path / "MSSEG-2016")
    whole = records_from_layout("msseg", root)
    inner = records_from_layout("msseg", root / "Training")
    assert inner.records == whole.records
    # A renamed Training folder still reads, as long as it holds Center_XX folders.
    (root / "Training").rename(root / "train-copy")
    moved = records_from_layout("msseg", root / "train-copy").records
    assert [(r.subject, r.site) for r in moved] == [(r.subject, r.site) for r in whole.records]
    assert all("train-copy" in str(r.image) for r in moved)


def test_msseg_skips_testing_and_notes_it(tmp_path: Path) -> None:
    root = _tree(tmp_path / "MSSEG-2016")
    for patient in ("Center_01/Patient_01", "Center_03/Patient_01", "Center_03/Patient_02"):
        _touch(root, f"Testing/{patient}/{FLAIR}", f"Testing/{patient}/{CONSENSUS}")
    (root / "docs").mkdir()
    listing = records_from_layout("msseg", root)
    assert len(listing.records) == 6
    assert all("Testing" not in str(r.image) for r in listing.records)
    assert listing.notes == (
        f"skipped {root / 'Testing'} (3 patient folder(s)): the challenge's test cases reuse "
        "the training's patient numbers and add a centre; list them in a CSV with ids of their "
        "own to use them",
        f"ignored folder(s) beside Training/ in {root}: docs",
    )


def test_msseg_refuses_patients_without_flair_or_consensus_all_in_one_message(
    tmp_path: Path,
) -> None:
    root = _tree(tmp_path / "MSSEG-2016")
    training = root / "Training"
    (training / "Center_01/Patient_02" / FLAIR).unlink()
    (training / "Center_07/Patient_01" / CONSENSUS).unlink()
    (training / "Center_08/Patient_02" / FLAIR).unlink()
    (training / "Center_08/Patient_02" / CONSENSUS).unlink()
    with pytest.raises(InputError) as caught:
        records_from_layout("msseg", root)
    message = str(caught.value)
    assert message.startswith(
        f"{training} does not follow the MS-SEG 2016 layout Center_XX/Patient_YY/"
        "{Preprocessed_Data/FLAIR_preprocessed.nii.gz, Masks/Consensus.nii.gz}: "
    )
    assert f"{training / 'Center_01/Patient_02'} has no {FLAIR};" in message
    assert f"{training / 'Center_07/Patient_01'} has no {CONSENSUS};" in message
    assert f"{training / 'Center_08/Patient_02'} has no {FLAIR} and no {CONSENSUS};" in message
    assert message.endswith("complete or move those folders, or list the subjects in a CSV (--csv)")


def test_msseg_refuses_unexpected_folders(tmp_path: Path) -> None:
    root = _tree(tmp_path / "MSSEG-2016")
    training = root / "Training"
    (training / "Extra").mkdir()
    (training / "Center_01" / "notes").mkdir()
    (training / "Center_09").mkdir()
    (training / "README.txt").write_text("files beside the folders are ignored")
    (training / ".hidden").mkdir()
    with pytest.raises(InputError) as caught:
        records_from_layout("msseg", root)
    message = str(caught.value)
    assert f"folder(s) in {training} that are not Center_XX: Extra;" in message
    assert f"folder(s) in {training / 'Center_01'} that are not Patient_YY: notes;" in message
    assert f"{training / 'Center_09'} holds no Patient_YY folder;" in message
    assert ".hidden" not in message and "README" not in message


def test_msseg_refuses_a_root_that_is_not_the_dataset(tmp_path: Path) -> None:
    (tmp_path / "elsewhere" / "Patients").mkdir(parents=True)
    with pytest.raises(InputError, match=r"elsewhere: neither a Training/ folder nor Center_XX"):
        records_from_layout("msseg", tmp_path / "elsewhere")
    (tmp_path / "empty" / "Training").mkdir(parents=True)
    with pytest.raises(InputError, match=r"Training: no Center_XX/Patient_YY folder"):
        records_from_layout("msseg", tmp_path / "empty")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"labels": "masks"}, "--labels does not go with --dataset msseg: the site is the"),
        ({"site_column": "centre"}, "--site-column does not go with --dataset msseg"),
        ({"label_desc": "x", "site_column": "s"}, "--site-column and --label-desc do not go"),
    ],
)
def test_msseg_refuses_the_other_layouts_options(
    tmp_path: Path, options: dict[str, str], message: str
) -> None:
    root = _tree(tmp_path / "MSSEG-2016")
    if "labels" in options:
        (tmp_path / options["labels"]).mkdir()
        options = {"labels": str(tmp_path / options["labels"])}
    with pytest.raises(ConfigError, match=message):
        records_from_layout("msseg", root, **options)


def _write_patient(folder: Path, scale: float, seed: int, lesion: bool = True) -> None:
    """A noisy FLAIR-like ball at 1.5 x 1.5 x 2 mm with a bright lesion and its consensus."""
    shape = (20, 24, 16)
    grid = np.indices(shape).astype(np.float64)
    radius = np.sqrt(((grid - np.array([9.5, 11.5, 7.5])[:, None, None, None]) ** 2).sum(axis=0))
    brain = radius <= 7.0
    spot = np.sqrt(((grid - np.array([7.0, 11.0, 7.0])[:, None, None, None]) ** 2).sum(axis=0))
    mask = (spot <= 1.5) & lesion
    data = np.abs(np.random.default_rng(seed).normal(0.0, 5.0, shape))
    data += (brain * 300.0 + mask * 400.0) * scale
    geometry = Geometry.from_affine(np.diag([1.5, 1.5, 2.0, 1.0]), shape)
    (folder / "Preprocessed_Data").mkdir(parents=True)
    (folder / "Masks").mkdir()
    save_image(data, folder / FLAIR, geometry=geometry)
    save_label(mask.astype(np.uint8), folder / CONSENSUS, geometry=geometry)


def test_prepare_dataset_msseg_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "MSSEG-2016"
    for k, patient in enumerate(PATIENTS):
        scale = {"01": 1.0, "07": 2.0, "08": 3.0}[patient[7:9]]
        _write_patient(root / "Training" / patient, scale, k, lesion=k != 1)
    _write_patient(root / "Testing" / "Center_03" / "Patient_01", 1.0, 9)
    out = tmp_path / "cache"
    argv = ["prepare", "--dataset", "msseg", str(root), "--out", str(out), "--target",
            "Center_01", "--bias-correction", "none", "--val-fraction", "0", "--quiet"]  # fmt: skip
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "note: skipped" in stdout and "Testing (1 patient folder(s))" in stdout
    manifest = open_manifest(out)
    assert manifest["sites"] == {"A": "Center_01", "B": "Center_07", "C": "Center_08"}
    assert manifest["class_names"] == ["background", "lesion"] and manifest["n_classes"] == 2
    assert manifest["headroom"] == 1.0  # MS-SEG's default: lesions keep their contrast
    assert [s["subject"] for s in manifest["subjects"]] == [p.replace("/", "_") for p in PATIENTS]
    assert all(Path(s["label"]).name == "Consensus.nii.gz" for s in manifest["subjects"])
    labels = np.concatenate([np.load(out / site / "labels.npy") for site in "ABC"])
    assert set(np.unique(labels)) == {0, 1}


def test_prepare_dataset_msseg_cli_refuses_an_incomplete_tree(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _tree(tmp_path / "MSSEG-2016")
    (root / "Training" / "Center_07/Patient_02" / CONSENSUS).unlink()
    argv = ["prepare", "--dataset", "msseg", str(root), "--out", str(tmp_path / "cache")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{root / 'Training' / 'Center_07/Patient_02'} has no {CONSENSUS}" in err
    assert not (tmp_path / "cache").exists()
