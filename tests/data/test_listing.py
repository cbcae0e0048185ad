"""Tests of segrenorm.data.listing: CSV listings and pairing images with labels by subject id."""

from __future__ import annotations

from pathlib import Path

import pytest

from segrenorm.data.listing import read_listing, records_from_inputs, subject_id
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
        ("subject,site,image,split\nsub-1,A,img.nii.gz,val\n", "line 2: split 'val' must be"),
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
