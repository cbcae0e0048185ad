"""Tests of the RETOUCH layout (segrenorm.data.layout_retouch) on miniature trees built here.

The trees use the challenge's own names: ``RETOUCH-TrainingSet-{Cirrus,Spectralis,Topcon}/
TRAINxxx/`` with ``oct.mhd``/``oct.raw`` and ``reference.mhd``/``reference.raw`` pairs written by
SimpleITK (tiny volumes), and ``RETOUCH-TestSet-<vendor>/TESTxxx/`` without references.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from segrenorm.cli import main
from segrenorm.data.layout_retouch import RETOUCH_CLASSES, retouch_records
from segrenorm.data.layouts import DATASET_LAYOUTS, LayoutListing, records_from_layout
from segrenorm.data.manifest import open_manifest
from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes.readwrite import load_image, load_label

# The challenge numbers its volumes across vendors: Cirrus 001-024, Spectralis 025-048, ...
VOLUMES = {"Cirrus": ["TRAIN001", "TRAIN002"], "Spectralis": ["TRAIN025"], "Topcon": ["TRAIN049"]}
# (x, y, z) = (A-scan, depth, B-scan) voxel sizes in mm, as the vendors' headers give them.
SPACING = {"Cirrus": (0.0117, 0.002, 0.047), "Spectralis": (0.011, 0.0039, 0.12),
           "Topcon": (0.0117, 0.0026, 0.047)}  # fmt: skip
SHAPE = (6, 8, 3)  # x, y, z


def _volume(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An (x, y, z) OCT-like volume and its fluid labels, all four classes present."""
    oct_ = np.random.default_rng(seed).integers(1, 255, SHAPE).astype(np.uint8)
    labels = np.zeros(SHAPE, np.uint8)
    labels[1, 2, 0], labels[2, 3, 1], labels[3, 5, 2] = 1, 2, 3
    return oct_, labels


def _write_mhd(array: np.ndarray, path: Path, spacing: tuple[float, float, float]) -> None:
    """Write an (x, y, z) array as a MetaImage pair (SimpleITK arrays are [z, y, x])."""
    image = sitk.GetImageFromArray(array.transpose(2, 1, 0))
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _tree(root: Path, volumes: dict[str, list[str]] = VOLUMES, test_set: bool = True) -> Path:
    """A RETOUCH download: training sets with references, and a test set without them."""
    for k, (vendor, names) in enumerate(volumes.items()):
        for j, name in enumerate(names):
            folder = root / f"RETOUCH-TrainingSet-{vendor}" / name
            oct_, labels = _volume(10 * k + j)
            _write_mhd(oct_, folder / "oct.mhd", SPACING[vendor])
            _write_mhd(labels, folder / "reference.mhd", SPACING[vendor])
    if test_set:
        for name in ("TEST001", "TEST002"):
            oct_, _ = _volume(99)
            _write_mhd(oct_, root / "RETOUCH-TestSet-Cirrus" / name / "oct.mhd", SPACING["Cirrus"])
    return root


def test_retouch_is_registered_as_an_oct_layout() -> None:
    assert "retouch" in DATASET_LAYOUTS
    assert LayoutListing([]).modality == "mri"  # the other layouts stay MRI


def test_retouch_reads_vendors_as_sites_and_references_as_labels(tmp_path: Path) -> None:
    root = _tree(tmp_path / "RETOUCH")
    listing = records_from_layout("retouch", root)
    assert listing.modality == "oct"
    assert listing.class_names == RETOUCH_CLASSES == ("background", "IRF", "SRF", "PED")
    assert [(r.subject, r.site) for r in listing.records] == [
        ("Cirrus_TRAIN001", "Cirrus"), ("Cirrus_TRAIN002", "Cirrus"),
        ("Spectralis_TRAIN025", "Spectralis"), ("Topcon_TRAIN049", "Topcon"),
    ]  # fmt: skip
    folders = [root / f"RETOUCH-TrainingSet-{v}" / n for v, ns in VOLUMES.items() for n in ns]
    assert [r.image for r in listing.records] == [(f / "oct.mhd").resolve() for f in folders]
    assert [r.label for r in listing.records] == [(f / "reference.mhd").resolve() for f in folders]
    assert all(r.split is None and r.group is None for r in listing.records)
    assert listing.notes == (
        f"skipped {root / 'RETOUCH-TestSet-Cirrus'} (2 volume folder(s)): the challenge's test "
        "volumes come without references; list them in a CSV to harmonize them",
    )


def test_retouch_records_read_back_as_the_volumes_written(tmp_path: Path) -> None:
    # End to end: what the layout lists loads, in (A-scan, depth, B-scan) order, with the
    # vendor's voxel size and the four fluid classes.
    root = _tree(tmp_path / "RETOUCH", test_set=False)
    records = records_from_layout("retouch", root).records
    for k, (vendor, names) in enumerate(VOLUMES.items()):
        for j, name in enumerate(names):
            record = next(r for r in records if r.subject == f"{vendor}_{name}")
            oct_, labels = _volume(10 * k + j)
            image = load_image(record.image)
            assert record.label is not None
            label = load_label(record.label, n_classes=len(RETOUCH_CLASSES), like=image)
            np.testing.assert_array_equal(image.data, oct_.astype(np.float32))
            np.testing.assert_array_equal(label.data, labels)
            assert image.geometry.spacing == pytest.approx(SPACING[vendor])


def test_retouch_root_may_be_one_vendor_folder_or_wrapped_folders(tmp_path: Path) -> None:
    root = _tree(tmp_path / "RETOUCH", test_set=False)
    one = records_from_layout("retouch", root / "RETOUCH-TrainingSet-Spectralis")
    assert [(r.subject, r.site) for r in one.records] == [("Spectralis_TRAIN025", "Spectralis")]
    # Each zip unpacked into a folder of its own: TrainingCirrus/RETOUCH-TrainingSet-Cirrus/,
    # or a folder named after the zip holding the zip's folder.
    wrapped = tmp_path / "wrapped"
    (wrapped / "TrainingCirrus").mkdir(parents=True)
    (root / "RETOUCH-TrainingSet-Cirrus").rename(
        wrapped / "TrainingCirrus" / "RETOUCH-TrainingSet-Cirrus"
    )
    twice = wrapped / "RETOUCH-TrainingSet-Topcon"
    twice.mkdir()
    (root / "RETOUCH-TrainingSet-Topcon").rename(twice / "RETOUCH-TrainingSet-Topcon")
    (wrapped / "notes").mkdir()
    listing = records_from_layout("retouch", wrapped)
    assert [r.subject for r in listing.records] == [
        "Cirrus_TRAIN001", "Cirrus_TRAIN002", "Topcon_TRAIN049",
    ]  # fmt: skip
    assert all("wrapped" in str(r.image) for r in listing.records)
    assert listing.notes == (f"ignored folder(s) in {wrapped} that hold no RETOUCH set: notes",)


def test_retouch_refuses_a_root_without_a_training_set(tmp_path: Path) -> None:
    (tmp_path / "elsewhere" / "scans").mkdir(parents=True)
    with pytest.raises(InputError) as caught:
        records_from_layout("retouch", tmp_path / "elsewhere")
    assert str(caught.value) == (
        f"{tmp_path / 'elsewhere'}: no RETOUCH-TrainingSet-<vendor> folder; the retouch layout "
        "reads ROOT/RETOUCH-TrainingSet-<vendor>/TRAINxxx/{oct.mhd, reference.mhd} (ROOT: the "
        "folder holding the unpacked vendor folders, or one of them)"
    )
    # A renamed vendor folder loses its vendor, the site: say so.
    root = _tree(tmp_path / "RETOUCH", test_set=False)
    (root / "RETOUCH-TrainingSet-Cirrus").rename(tmp_path / "cirrus-copy")
    with pytest.raises(InputError, match=r"cirrus-copy holds TRAINxxx folders: keep its "):
        records_from_layout("retouch", tmp_path / "cirrus-copy")
    test_only = tmp_path / "tests-only"
    (test_only / "RETOUCH-TestSet-Topcon" / "TEST029").mkdir(parents=True)
    with pytest.raises(InputError, match=r"folder \(only RETOUCH-TestSet-Topcon\); the retouch"):
        records_from_layout("retouch", test_only)


def test_retouch_refuses_a_root_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "RETOUCH"
    with pytest.raises(InputError, match=rf"^{missing}: no such folder; give the retouch "):
        records_from_layout("retouch", missing)
    with pytest.raises(InputError) as caught:
        retouch_records(missing)
    assert str(caught.value) == (
        f"{missing}: no such folder; give the folder holding the unpacked "
        "RETOUCH-TrainingSet-<vendor> folders, or one of them"
    )


def test_retouch_refuses_incomplete_volumes_all_in_one_message(tmp_path: Path) -> None:
    root = _tree(tmp_path / "RETOUCH", test_set=False)
    cirrus, spectralis = (
        root / "RETOUCH-TrainingSet-Cirrus",
        root / "RETOUCH-TrainingSet-Spectralis",
    )
    (cirrus / "TRAIN002" / "oct.mhd").unlink()
    (spectralis / "TRAIN025" / "reference.raw").unlink()
    (root / "RETOUCH-TrainingSet-Topcon" / "TRAIN049" / "reference.mhd").write_text("NDims = 3\n")
    (cirrus / "extra").mkdir()
    (cirrus / "README.txt").write_text("files beside the volume folders are ignored")
    with pytest.raises(InputError) as caught:
        records_from_layout("retouch", root)
    message = str(caught.value)
    assert message.startswith(
        f"{root} does not follow the RETOUCH layout RETOUCH-TrainingSet-<vendor>/TRAINxxx/"
        "{oct.mhd, reference.mhd} with the .raw files their headers name: "
    )
    assert f"folder(s) in {cirrus} that are not TRAINxxx: extra;" in message
    assert f"{cirrus / 'TRAIN002'} has no oct.mhd;" in message
    assert (
        f"{spectralis / 'TRAIN025' / 'reference.mhd'} names its data file reference.raw, which "
        f"is missing from {spectralis / 'TRAIN025'};"
    ) in message
    topcon = root / "RETOUCH-TrainingSet-Topcon" / "TRAIN049" / "reference.mhd"
    assert f"{topcon} names no ElementDataFile (not a MetaImage header);" in message
    assert "README" not in message and "TRAIN001" not in message
    assert message.endswith("complete or move those folders, or list the subjects in a CSV (--csv)")


def test_retouch_refuses_a_vendor_without_volumes_or_given_twice(tmp_path: Path) -> None:
    root = _tree(tmp_path / "RETOUCH", test_set=False)
    (root / "RETOUCH-TrainingSet-Nidek").mkdir()
    with pytest.raises(InputError, match=r"RETOUCH-TrainingSet-Nidek holds no TRAINxxx folder"):
        records_from_layout("retouch", root)
    (root / "RETOUCH-TrainingSet-Nidek").rmdir()
    (root / "copy").mkdir()
    (root / "RETOUCH-TrainingSet-Topcon").rename(root / "copy" / "retouch-trainingset-topcon")
    _tree(root, {"Topcon": ["TRAIN050"]}, test_set=False)
    with pytest.raises(InputError) as caught:
        records_from_layout("retouch", root)
    assert str(caught.value) == (
        f"{root}: several training-set folders of one vendor: Topcon "
        f"({root / 'RETOUCH-TrainingSet-Topcon'}, {root / 'copy' / 'retouch-trainingset-topcon'})"
        "; keep one per vendor (the vendor is the site)"
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"labels": "masks"}, "--labels does not go with --dataset retouch: the site is the"),
        ({"site_column": "vendor"}, "--site-column does not go with --dataset retouch"),
        ({"label_desc": "x", "site_column": "s"}, "--site-column and --label-desc do not go"),
    ],
)
def test_retouch_refuses_the_other_layouts_options(
    tmp_path: Path, options: dict[str, str], message: str
) -> None:
    root = _tree(tmp_path / "RETOUCH", {"Cirrus": ["TRAIN001"]}, test_set=False)
    if "labels" in options:
        (tmp_path / options["labels"]).mkdir()
        options = {"labels": str(tmp_path / options["labels"])}
    with pytest.raises(ConfigError, match=message):
        records_from_layout("retouch", root, **options)


def test_prepare_dataset_retouch_through_the_cli_implies_oct(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    volumes = {"Cirrus": ["TRAIN001", "TRAIN002"], "Spectralis": ["TRAIN025", "TRAIN026"]}
    root = _tree(tmp_path / "RETOUCH", volumes)
    out = tmp_path / "cache"
    argv = [
        "prepare",
        "--dataset",
        "retouch",
        str(root),
        "--out",
        str(out),
        "--val-fraction",
        "0",
        "--test-fraction",
        "0",
        "--quiet",
        "--min-foreground",
        "0",
    ]  # fmt: skip  (noise volumes: keep every B-scan)
    assert main(argv) == 0
    assert "note: skipped" in capsys.readouterr().out
    manifest = open_manifest(out)
    assert manifest["modality"] == "oct"  # implied by the layout, no --modality given
    assert manifest["sites"] == {"A": "Cirrus", "B": "Spectralis"}
    assert manifest["class_names"] == list(RETOUCH_CLASSES) and manifest["n_classes"] == 4
    assert [s["subject"] for s in manifest["subjects"]] == [
        "Cirrus_TRAIN001", "Cirrus_TRAIN002", "Spectralis_TRAIN025", "Spectralis_TRAIN026",
    ]  # fmt: skip
    # The target keeps its grid: one slice per B-scan (3 each), every fluid class kept.
    labels = np.load(out / "B" / "labels.npy")
    assert labels.shape[0] == 2 * SHAPE[2] and set(np.unique(labels)) == {0, 1, 2, 3}
