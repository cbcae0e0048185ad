"""Tests of segrenorm.data.listing: CSV listings and pairing images with labels by subject id."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from segrenorm.data.listing import (
    SubjectRecord,
    assign_splits,
    read_listing,
    records_from_inputs,
    subject_id,
)
from segrenorm.errors import ConfigError, InputError


def _touch_subject(
    folder: Path, name: str, scale: float, seed: int, *, label_name: str | None = None
) -> tuple[Path, Path]:
    """An image and a label file of one subject: listings look at names, not voxels."""
    del scale, seed  # the signature of test_prepare's writer; voxels do not matter here
    folder.mkdir(parents=True, exist_ok=True)
    image = folder / f"{name}_T1w.nii.gz"
    label = folder / f"{label_name or name + '_dseg'}.nii.gz"
    image.write_bytes(b"")
    label.write_bytes(b"")
    return image, label


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("subject,site\nsub-1,A\n", r"missing column\(s\) image"),
        ("subject,site,image\n", "has a header but no subject rows"),
        ("subject,site,image\nsub-1,,img.nii.gz\n", r"line 2: empty value for site"),
        ("subject,site,image\nsub-1,A,nowhere.nii.gz\n", r"line 2: file .*nowhere.nii.gz does not"),
        (
            "subject,site,image,split\nsub-1,A,img.nii.gz,dev\n",
            "line 2: split 'dev' must be 'train', 'val', 'test' or empty",
        ),
        (
            "subject,site,image\nsub-1,A,img.nii.gz\nsub-1,A,img.nii.gz\n",
            "line 3: subject 'sub-1' is listed twice for site 'A'",
        ),
    ],
)
def test_read_listing_errors_name_the_row(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "img.nii.gz").write_bytes(b"")
    listing = tmp_path / "list.csv"
    listing.write_text(text)
    with pytest.raises(InputError, match=message):
        read_listing(listing)
    with pytest.raises(InputError, match="does not exist"):
        read_listing(tmp_path / "absent.csv")


def test_records_from_inputs_pairs_labels_by_subject_id(tmp_path: Path) -> None:
    for k in range(2):
        _touch_subject(tmp_path / "a", f"sub-{k}", 1.0, k)
        _touch_subject(tmp_path / "b", f"sub-{k + 5}", 1.0, k, label_name=f"sub-{k + 5}_label")
    records = records_from_inputs(
        [str(tmp_path / "a" / "*_T1w.nii.gz")],
        [str(tmp_path / "b" / "*_T1w.nii.gz")],
        [str(tmp_path / "a" / "*_dseg.nii.gz")],
        [str(tmp_path / "b" / "*_label.nii.gz")],
        site_names=("1.5T", "3T"),
    )
    assert [(r.site, r.subject) for r in records] == [
        ("1.5T", "sub-0"), ("1.5T", "sub-1"), ("3T", "sub-5"), ("3T", "sub-6")
    ]  # fmt: skip
    assert all(r.label is not None and subject_id(r.label) == r.subject for r in records)
    assert subject_id("x/sub-02_T1w.mha") == "sub-02" and subject_id("s_LABELS.nrrd") == "s"
    unlabelled = records_from_inputs(
        [tmp_path / "a" / "sub-0_T1w.nii.gz"], [str(tmp_path / "b" / "*T1w*")]
    )
    assert unlabelled[0].label is None
    # Images and labels in one folder: the files given as labels are not taken as images.
    together = records_from_inputs(
        [tmp_path / "a"],
        [tmp_path / "b"],
        [str(tmp_path / "a" / "*_dseg.nii.gz")],
        [str(tmp_path / "b" / "*_label.nii.gz")],
    )
    assert [r.subject for r in together] == ["sub-0", "sub-1", "sub-5", "sub-6"]


def test_records_from_inputs_errors(tmp_path: Path) -> None:
    _touch_subject(tmp_path / "a", "sub-0", 1.0, 0)
    _touch_subject(tmp_path / "a", "sub-1", 1.0, 1, label_name="other_dseg")
    images = [str(tmp_path / "a" / "*_T1w.nii.gz")]
    labels = [str(tmp_path / "a" / "*_dseg.nii.gz")]
    with pytest.raises(
        InputError, match=r"no label map for .*sub-1_T1w.nii.gz \(subject id 'sub-1'\)"
    ):
        records_from_inputs(images, images, labels, labels)
    with pytest.raises(InputError, match="labels were given for one site only"):
        records_from_inputs(images, images, labels, None)
    with pytest.raises(InputError, match="both have subject id 'sub-0'"):
        records_from_inputs([str(tmp_path / "a" / "sub-0*")], images)
    with pytest.raises(InputError, match="site A: every image given was also given as a label"):
        records_from_inputs([tmp_path / "a"], images, [tmp_path / "a"], labels)
    with pytest.raises(ConfigError, match="must be two different names"):
        records_from_inputs(images, images, site_names=("X", "X"))


def _site(n: int, splits: dict[int, str] | None = None, site: str = "1.5T") -> list[SubjectRecord]:
    """``n`` subjects of one site, listed in reverse id order, some with a listed split."""
    splits = splits or {}
    return [
        SubjectRecord(f"sub-{k:02d}", site, Path(f"/x/{k}.nii.gz"), None, splits.get(k))
        for k in reversed(range(n))
    ]


def _by_subject(
    records: list[SubjectRecord], drawn: list[tuple[str, int]]
) -> dict[str, tuple[str, int]]:
    return {r.subject: pair for r, pair in zip(records, drawn, strict=True)}


def _old_test_draw(n: int, test_fraction: float, seed: int, site_idx: int) -> set[str]:
    """The test subjects the train/test-only draw gave (before the val split existed)."""
    rng = np.random.default_rng([seed, site_idx])
    ids = [f"sub-{k:02d}" for k in range(n)]
    n_test = min(int(np.floor(test_fraction * n + 0.5)), n - 1)
    return {ids[j] for j in rng.permutation(n)[:n_test]}


@pytest.mark.parametrize(
    ("n", "counts"),
    # (train, val, test) by hand: round half up of 0.3 n and 0.15 n.
    [(20, (11, 3, 6)), (10, (5, 2, 3)), (5, (2, 1, 2)), (4, (2, 1, 1)), (3, (2, 0, 1)),
     (2, (1, 0, 1)), (1, (1, 0, 0))],
)  # fmt: skip
def test_assign_splits_counts_and_keeps_the_old_test_subjects(
    n: int, counts: tuple[int, int, int]
) -> None:
    records = _site(n)
    for seed, site_idx in ((0, 0), (0, 1), (7, 0)):
        drawn = assign_splits(records, 0.3, 5, seed, site_idx, val_fraction=0.15)
        by_split = {
            split: {r.subject for r, (s, _) in zip(records, drawn, strict=True) if s == split}
            for split in ("train", "val", "test")
        }
        assert tuple(len(by_split[s]) for s in ("train", "val", "test")) == counts
        assert by_split["test"] == _old_test_draw(n, 0.3, seed, site_idx)
        # Without a val split, the val subjects train; folds never depend on val_fraction.
        plain = assign_splits(records, 0.3, 5, seed, site_idx)
        assert [f for _, f in plain] == [f for _, f in drawn]
        assert {r.subject for r, (s, _) in zip(records, plain, strict=True) if s == "train"} == (
            by_split["train"] | by_split["val"]
        )
    # The draw is per subject id, whatever the listing order.
    forward = _by_subject(records, assign_splits(records, 0.3, 5, 0, 0, val_fraction=0.15))
    backward = records[::-1]
    assert _by_subject(backward, assign_splits(backward, 0.3, 5, 0, 0, 0.15)) == forward


def test_assign_splits_listed_splits_win_and_fractions_apply_to_the_rest() -> None:
    # Every subject listed: the fractions do not apply, however few subjects there are.
    listed = _site(3, {0: "train", 1: "val", 2: "test"})
    assert [s for s, _ in assign_splits(listed, 0.3, 2, 0, 0, val_fraction=0.6)] == [
        "test",
        "val",
        "train",
    ]
    # Two listed training subjects: the val draw may take every free subject left after test.
    mixed = _site(4, {0: "train", 1: "train"})
    splits = {
        k: s for k, (s, _) in _by_subject(mixed, assign_splits(mixed, 0.3, 2, 0, 0, 0.5)).items()
    }
    assert splits["sub-00"] == splits["sub-01"] == "train"
    assert sorted(splits[k] for k in ("sub-02", "sub-03")) == ["test", "val"]


@pytest.mark.parametrize(
    ("n", "test_fraction", "val_fraction", "drawn"),
    [(2, 0.3, 0.5, "1 test .* and 1 val"), (1, 0.3, 0.6, "0 test .* and 1 val"),
     (4, 0.5, 0.45, "2 test .* and 2 val")],
)  # fmt: skip
def test_assign_splits_refuses_to_leave_train_empty(
    n: int, test_fraction: float, val_fraction: float, drawn: str
) -> None:
    with pytest.raises(InputError) as info:
        assign_splits(_site(n, site="3T"), test_fraction, 5, 0, 1, val_fraction=val_fraction)
    message = str(info.value)
    assert message.startswith(f"site '3T' has {n} subject(s) without a listed split")
    assert re.search(drawn, message)
    assert "would leave the train split empty" in message
    assert "lower the val fraction (--val-fraction, 0 for no val split)" in message
    assert "or add subjects to the site" in message


def test_read_listing_accepts_a_val_split(tmp_path: Path) -> None:
    (tmp_path / "img.nii.gz").write_bytes(b"")
    listing = tmp_path / "list.csv"
    listing.write_text("subject,site,image,split\nsub-1,A,img.nii.gz,VAL\nsub-2,A,img.nii.gz,\n")
    assert [r.split for r in read_listing(listing)] == ["val", None]
    with pytest.raises(InputError, match="split 'dev' is not 'train', 'val' or 'test'"):
        SubjectRecord("s", "A", listing, None, split="dev")
