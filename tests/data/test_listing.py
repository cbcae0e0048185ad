"""Tests of segrenorm.data.listing: CSV listings and pairing images with labels by subject id."""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np
import pytest

from segrenorm.data.listing import (
    SubjectRecord,
    check_distinct,
    read_listing,
    records_from_inputs,
    subject_id,
)
from segrenorm.data.splits import assign_splits
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
        ("subject,site\nsub-1,A\n", r"missing column\(s\) image \(the header has subject, site\)"),
        ("subject,site,image\n", "has a header but no subject rows"),
        ("subject,site,image\nsub-1,,img.nii.gz\n", r"line 2: empty value for site"),
        (
            "subject,site,image\nsub-1,A,nowhere.nii.gz\n",
            r"line 2: image file .*nowhere.nii.gz does",
        ),
        (
            "subject,site,image,split\nsub-1,A,img.nii.gz,dev\n",
            "line 2: split 'dev' must be 'train', 'val', 'test' or empty",
        ),
        (
            "subject,site,image\nsub-1,A,img.nii.gz\nsub-1,A,img.nii.gz\n",
            r"line 3: subject 'sub-1' is listed twice for site 'A' \(first at line 2\)",
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
        [("1.5T", [str(tmp_path / "a" / "*_T1w.nii.gz")]),
         ("3T", [str(tmp_path / "b" / "*_T1w.nii.gz")])],
        {"1.5T": [str(tmp_path / "a" / "*_dseg.nii.gz")],
         "3T": [str(tmp_path / "b" / "*_label.nii.gz")]},
    )  # fmt: skip
    assert [(r.site, r.subject) for r in records] == [
        ("1.5T", "sub-0"), ("1.5T", "sub-1"), ("3T", "sub-5"), ("3T", "sub-6")
    ]  # fmt: skip
    assert all(r.label is not None and subject_id(r.label) == r.subject for r in records)
    assert subject_id("x/sub-02_T1w.mha") == "sub-02" and subject_id("s_LABELS.nrrd") == "s"
    unlabelled = records_from_inputs(
        [("A", [tmp_path / "a" / "sub-0_T1w.nii.gz"]), ("B", [str(tmp_path / "b" / "*T1w*")])]
    )
    assert unlabelled[0].label is None
    # Images and labels in one folder: the files given as labels are not taken as images.
    together = records_from_inputs(
        [("A", [tmp_path / "a"]), ("B", [tmp_path / "b"])],
        {"A": [str(tmp_path / "a" / "*_dseg.nii.gz")], "B": [str(tmp_path / "b" / "*_label*")]},
    )
    assert [r.subject for r in together] == ["sub-0", "sub-1", "sub-5", "sub-6"]


def test_records_from_inputs_errors(tmp_path: Path) -> None:
    _touch_subject(tmp_path / "a", "sub-0", 1.0, 0)
    _touch_subject(tmp_path / "a", "sub-1", 1.0, 1, label_name="other_dseg")
    images = [str(tmp_path / "a" / "*_T1w.nii.gz")]
    labels = [str(tmp_path / "a" / "*_dseg.nii.gz")]
    with pytest.raises(
        InputError, match=r"site B: no label map for .*sub-1_T1w.nii.gz \(subject id 'sub-1'\)"
    ):
        records_from_inputs([("A", [tmp_path / "a" / "sub-0_T1w.nii.gz"]),
                             ("B", images)], {"B": labels})  # fmt: skip
    with pytest.raises(InputError, match="both have subject id 'sub-0'"):
        records_from_inputs([("A", [str(tmp_path / "a" / "sub-0*")]), ("B", images)])
    with pytest.raises(InputError, match="site A: every image given was also given as a label"):
        records_from_inputs([("A", [tmp_path / "a"]), ("B", images)], {"A": [tmp_path / "a"]})
    with pytest.raises(ConfigError, match=r"site name\(s\) \['X'\] given more than once"):
        records_from_inputs([("X", images), ("X", images)])
    with pytest.raises(ConfigError, match=r"labels given for site\(s\) \['C'\] that are not"):
        records_from_inputs([("A", images), ("B", images)], {"C": labels})


def test_records_from_inputs_takes_n_sites_with_labels_for_some(tmp_path: Path) -> None:
    for site in ("x", "y", "z"):
        for k in range(2):
            _touch_subject(tmp_path / site, f"sub-{site}{k}", 1.0, k)
    records = records_from_inputs(
        [(name, [str(tmp_path / name / "*_T1w*")]) for name in ("z", "x", "y")],
        {"x": [str(tmp_path / "x" / "*_dseg*")]},
    )
    assert [(r.site, r.subject) for r in records] == [
        ("z", "sub-z0"), ("z", "sub-z1"), ("x", "sub-x0"), ("x", "sub-x1"), ("y", "sub-y0"),
        ("y", "sub-y1"),
    ]  # fmt: skip
    # Labels only where given: the listing stays permissive, prepare decides (--auto-labels).
    assert [r.label is not None for r in records] == [False, False, True, True, False, False]
    assert records[2].label == (tmp_path / "x" / "sub-x0_dseg.nii.gz").resolve()


def test_read_listing_reports_every_bad_row_at_once(tmp_path: Path) -> None:
    (tmp_path / "img.nii.gz").write_bytes(b"")
    listing = tmp_path / "list.csv"
    listing.write_text(
        "subject,site,image,label,split\n"
        "s1,A,img.nii.gz,,train\n"  # line 2: fine
        "s2,,gone.nii.gz,,\n"  # line 3: two problems
        "s1,A,img.nii.gz,,\n"  # line 4: a duplicate row
        "s3,B,img.nii.gz,nolabel.nii.gz,dev\n"  # line 5: a missing label and a bad split
        "s4,B,img.nii.gz,,\n"  # line 6: fine
    )
    with pytest.raises(InputError) as info:
        read_listing(listing)
    message = str(info.value)
    assert message.startswith(f"{listing}: 3 bad row(s); fix them and run again: ")
    parts = message.split(": ", 2)[2].split("; ")
    assert [p.split(":")[0] for p in parts] == ["line 3", "line 4", "line 5"]
    assert parts[0].startswith("line 3: empty value for site, image file ")
    assert parts[0].endswith("gone.nii.gz does not exist")
    assert parts[1] == "line 4: subject 's1' is listed twice for site 'A' (first at line 2)"
    assert "label file " in parts[2] and "nolabel.nii.gz does not exist" in parts[2]
    assert parts[2].endswith("split 'dev' must be 'train', 'val', 'test' or empty")


def _record(subject: str, site: str, image: Path, split: str | None = None) -> SubjectRecord:
    return SubjectRecord(subject, site, image, None, split)


def test_check_distinct_refuses_one_file_at_two_sites(tmp_path: Path) -> None:
    for name in ("a.nii.gz", "b.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "link.nii.gz").symlink_to(tmp_path / "a.nii.gz")
    os.link(tmp_path / "b.nii.gz", tmp_path / "hard.nii.gz")
    check_distinct(
        [_record("s1", "A", tmp_path / "a.nii.gz"), _record("s2", "B", tmp_path / "b.nii.gz")]
    )
    for other in ("link.nii.gz", "hard.nii.gz", "a.nii.gz"):
        first = "a.nii.gz" if other != "hard.nii.gz" else "b.nii.gz"
        records = [_record("s1", "A", tmp_path / first), _record("s2", "B", tmp_path / other)]
        with pytest.raises(InputError) as info:
            check_distinct(records)
        message = str(info.value)
        assert message.startswith("the same image file is listed more than once")
        both = "" if other == first else f" and {tmp_path / other}"
        assert f"(1 image(s), e.g. {tmp_path / first}{both}). Give each site" in message
        assert message.endswith("Give each site its own files")


def test_check_distinct_sums_up_a_folder_given_twice_and_lists_a_few_pairs(
    tmp_path: Path,
) -> None:
    images = [tmp_path / f"s{k:03d}.nii.gz" for k in range(200)]
    for image in images:
        image.write_bytes(b"x")
    site_a = [_record(f"a{k}", "A", image) for k, image in enumerate(images)]
    site_b = [_record(f"b{k}", "B", image) for k, image in enumerate(images)]
    with pytest.raises(InputError) as info:
        check_distinct(site_a + site_b)
    assert str(info.value) == (
        "the same image file is listed more than once, so a subject would train against "
        f"itself: sites 'A' and 'B' are given the same files (200 image(s), e.g. {images[0]}). "
        "Give each site its own files"
    )
    # One site's images all among another's: said once; a partial overlap: five pairs and a count.
    site_c = [_record("c0", "C", images[7])]
    site_d = [_record(f"d{k}", "D", tmp_path / f"d{k}.nii.gz") for k in range(3)]
    site_d += [_record(f"d{k}", "D", image) for k, image in enumerate(images[100:108], 3)]
    with pytest.raises(InputError) as info:
        check_distinct(site_a + site_c + site_d)
    message = str(info.value)
    assert f"every image of site 'C' is also given to site 'A' (1 image(s), e.g. {images[7]})" in (
        message
    )
    assert message.count("are the same image file") == 5
    assert f"{images[104]} (site 'A', subject 'a104') and {images[104]} (site 'D', subject " in (
        message
    )
    assert "are the same image file; and 3 more. Give each site its own files" in message


def test_check_distinct_allows_one_subject_id_only_as_a_paired_held_out_subject(
    tmp_path: Path,
) -> None:
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    for path in (a, b):
        path.write_bytes(b"x")
    for split in ("val", "test"):  # a travelling subject, held out at both sites
        check_distinct([_record("t1", "A", a, split), _record("t1", "B", b, split)])
    for splits in ((None, None), ("train", "train"), ("test", "val"), ("test", None)):
        records = [_record("t1", "A", a, splits[0]), _record("t1", "B", b, splits[1])]
        with pytest.raises(InputError) as info:
            check_distinct(records)
        message = str(info.value)
        assert message.startswith(
            f"one subject id at two sites: subject 't1' is at site 'A' ({a}) and at site 'B' ({b})"
        )
        assert "with the same split 'val' or 'test'" in message


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
    [(20, (11, 3, 6)), (10, (5, 2, 3)), (5, (2, 1, 2)), (4, (2, 1, 1))],
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


@pytest.mark.parametrize(
    ("n", "test_fraction", "val_fraction", "empty"),
    # round half up: 0.15 x 3 = 0.45 -> 0 val; 0.1 x 4 = 0.4 -> 0 test; 0.2 x 2 = 0.4 -> 0 test.
    [(3, 0.3, 0.15, "val"), (2, 0.3, 0.15, "val"), (4, 0.1, 0.0, "test"),
     (2, 0.2, 0.2, "test and val")],
)  # fmt: skip
def test_assign_splits_refuses_a_requested_split_that_rounds_to_nothing(
    n: int, test_fraction: float, val_fraction: float, empty: str
) -> None:
    with pytest.raises(InputError) as info:
        assign_splits(_site(n, site="3T"), test_fraction, 5, 0, 1, val_fraction=val_fraction)
    message = str(info.value)
    assert message.startswith(f"site '3T' has {n} subject(s) without a listed split, too few")
    assert f"so the {empty} split would be empty at this site" in message
    for split in empty.split(" and "):
        assert f"--{split}-fraction 0 for no {split} split" in message
    assert "Add subjects to the site, raise the fraction" in message
    assert message.endswith("or list each subject's split in a CSV 'split' column (--csv)")


def test_assign_splits_without_a_requested_split_or_with_listed_ones_passes() -> None:
    # Fractions of 0 ask for no split: two subjects give one train, one test.
    assert sorted(s for s, _ in assign_splits(_site(2), 0.3, 5, 0, 0, val_fraction=0.0)) == [
        "test",
        "train",
    ]
    assert [s for s, _ in assign_splits(_site(1), 0.0, 5, 0, 0)] == ["train"]
    # A listed val subject fills the val split, so the free ones need not.
    listed = _site(3, {0: "val"})
    splits = dict(_by_subject(listed, assign_splits(listed, 0.3, 5, 0, 0, val_fraction=0.15)))
    assert splits["sub-00"][0] == "val"
    assert sorted(splits[k][0] for k in ("sub-01", "sub-02")) == ["test", "train"]
    # Every subject listed: exempt, however few.
    assert [s for s, _ in assign_splits(_site(1, {0: "train"}), 0.3, 5, 0, 0, 0.15)] == ["train"]


@pytest.mark.parametrize(
    ("test_fraction", "val_fraction", "listed", "what"),
    # One free subject: test is clipped to 0 whatever the fraction (0.3 rounds to 0, 0.9 to 1);
    # val too without a listed training subject.
    [(0.3, 0.0, {}, "test split (--test-fraction 0.3)"),
     (0.9, 0.0, {}, "test split (--test-fraction 0.9)"),
     (0.3, 0.1, {}, "test split (--test-fraction 0.3) and val split (--val-fraction 0.1)"),
     (0.9, 0.0, {0: "train"}, "test split (--test-fraction 0.9)")],
)  # fmt: skip
def test_assign_splits_one_free_subject_must_train(
    test_fraction: float, val_fraction: float, listed: dict[int, str], what: str
) -> None:
    records = _site(len(listed) + 1, listed, site="3T")
    with pytest.raises(InputError) as info:
        assign_splits(records, test_fraction, 5, 0, 1, val_fraction=val_fraction)
    message = str(info.value)
    assert message.startswith(
        f"site '3T' has only one subject without a listed split: it must train, so the "
        f"requested {what} would be empty at this site. Add subjects to the site, pass --test-"
    )
    assert "raise the fraction" not in message
    assert message.endswith("or list each subject's split in a CSV 'split' column (--csv)")
    # With a listed training subject, one free subject can be val: raising that fraction helps.
    with pytest.raises(InputError, match=r"too few for the requested val split .* raise the frac"):
        assign_splits(_site(2, {0: "train"}), 0.0, 5, 0, 1, val_fraction=0.2)
    assert [s for s, _ in assign_splits(_site(2, {0: "train"}), 0.0, 5, 0, 1, 0.5)] == [
        "val", "train"
    ]  # fmt: skip


def _sessions(splits: dict[str, str] | None = None) -> list[SubjectRecord]:
    """Twelve BIDS participants of one site, three of them with two sessions."""
    splits = splits or {}
    records = []
    for k in range(12):
        sessions = ("ses-01", "ses-02") if k % 4 == 0 else (None,)
        for ses in sessions:
            sid = f"sub-{k:02d}" + (f"_{ses}" if ses else "")
            records.append(
                SubjectRecord(sid, "A", Path(f"/x/{sid}.nii"), None, splits.get(sid),
                              group=f"sub-{k:02d}")
            )  # fmt: skip
    return records


def test_assign_splits_draws_per_person_not_per_session() -> None:
    records = _sessions()
    for seed in range(20):
        drawn = assign_splits(records, 0.3, 5, seed, 0, val_fraction=0.15)
        by_group: dict[str | None, set[tuple[str, int]]] = {}
        for record, pair in zip(records, drawn, strict=True):
            by_group.setdefault(record.group, set()).add(pair)
        assert all(len(pairs) == 1 for pairs in by_group.values())  # one split and one fold
        # Twelve people, not fifteen records: round(3.6) = 4 test and round(1.8) = 2 val people.
        people = [next(iter(pairs))[0] for pairs in by_group.values()]
        assert (people.count("test"), people.count("val")) == (4, 2)
    # One record per group draws exactly as no groups (the draw before groups existed).
    own = [dataclasses.replace(r, group=r.subject) for r in _site(7)]
    assert assign_splits(own, 0.3, 5, 3, 1, 0.15) == assign_splits(_site(7), 0.3, 5, 3, 1, 0.15)
    # A split listed for one session holds for the person's other session too.
    listed = assign_splits(_sessions({"sub-04_ses-02": "test"}), 0.3, 5, 0, 0)
    assert [s for s, _ in listed[5:7]] == ["test", "test"]
    with pytest.raises(InputError, match=r"the records of 'sub-00' are listed in different split"):
        assign_splits(_sessions({"sub-00_ses-01": "train", "sub-00_ses-02": "test"}), 0.3, 5, 0, 0)
