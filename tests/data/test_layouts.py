"""Tests of segrenorm.data.layouts: IXI and BIDS trees, built here with the datasets' naming.

The layouts read names, not voxels, so these trees hold empty files; the end-to-end runs on
real tiny volumes are in tests/cli/test_prepare_cmd.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from segrenorm.data.layouts import DATASET_LAYOUTS, NO_DESC, records_from_layout
from segrenorm.errors import ConfigError, InputError


def _touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


IXI_T1 = ["IXI002-Guys-0828-T1", "IXI012-HH-1211-T1", "IXI013-HH-1212-T1", "IXI035-IOP-0873-T1"]


@pytest.fixture()
def ixi(tmp_path: Path) -> Path:
    """IXI-T1 and IXI-T2 downloads unpacked into one folder, plus tissue labels for three."""
    root = tmp_path / "IXI"
    _touch(root, *[f"{n}.nii.gz" for n in IXI_T1], "IXI002-Guys-0828-T2.nii.gz",
           "IXI012-HH-1211-PD.nii.gz", "IXI012-HH-1211-DTI-03.nii.gz", "IXI.xls")  # fmt: skip
    labels = tmp_path / "labels"
    _touch(labels, "IXI002-Guys-0828-T1_seg.nii.gz", "IXI012-HH-1211-T1_dseg.nii.gz",
           "IXI035-IOP-0873-T1.nii.gz", "IXI099-IOP-0001-T1_seg.nii.gz")  # fmt: skip
    return root


def test_ixi_reads_sites_and_subjects_from_names_and_labels_by_stem(
    ixi: Path, tmp_path: Path
) -> None:
    listing = records_from_layout("ixi", ixi, labels=tmp_path / "labels")
    assert [(r.subject, r.site) for r in listing.records] == [
        ("IXI002", "Guys"), ("IXI012", "HH"), ("IXI013", "HH"), ("IXI035", "IOP")
    ]  # fmt: skip
    assert [r.image for r in listing.records] == [(ixi / f"{n}.nii.gz").resolve() for n in IXI_T1]
    labels = tmp_path / "labels"
    assert [r.label for r in listing.records] == [
        (labels / "IXI002-Guys-0828-T1_seg.nii.gz").resolve(),
        (labels / "IXI012-HH-1211-T1_dseg.nii.gz").resolve(),
        None,
        (labels / "IXI035-IOP-0873-T1.nii.gz").resolve(),
    ]
    assert all(r.split is None for r in listing.records)
    assert listing.notes == (
        "skipped 3 non-T1 IXI file(s) (DTI 1, PD 1, T2 1)",
        f"1 of 4 T1 volume(s) have no label map in {labels}: IXI013",
        "1 label map(s) match no T1 volume: IXI099-IOP-0001-T1",
    )
    # Without labels: every record unlabelled and no label notes.
    plain = records_from_layout("ixi", ixi)
    assert [r.label for r in plain.records] == [None] * 4
    assert plain.notes == ("skipped 3 non-T1 IXI file(s) (DTI 1, PD 1, T2 1)",)


def test_ixi_labels_beside_the_images(tmp_path: Path) -> None:
    _touch(tmp_path, "IXI002-Guys-0828-T1.nii.gz", "IXI002-Guys-0828-T1_label.nii.gz",
           "IXI012-HH-1211-T1.nii.gz", "IXI012-HH-1211-T1_labels.nii.gz")  # fmt: skip
    listing = records_from_layout("ixi", tmp_path, labels=tmp_path)
    assert [(r.subject, r.label.name if r.label else None) for r in listing.records] == [
        ("IXI002", "IXI002-Guys-0828-T1_label.nii.gz"),
        ("IXI012", "IXI012-HH-1211-T1_labels.nii.gz"),
    ]
    assert listing.notes == ()


def test_ixi_refuses_files_outside_the_naming_all_in_one_message(ixi: Path, tmp_path: Path) -> None:
    _touch(ixi, "notes.nii.gz", "IXI002_T1.nii.gz", "IXI014-HH-T1.nii")
    with pytest.raises(InputError) as info:
        records_from_layout("ixi", ixi)
    message = str(info.value)
    assert message.startswith(f"{ixi}: 3 image file(s) do not follow the IXI naming ")
    assert "IXI002_T1.nii.gz, IXI014-HH-T1.nii, notes.nii.gz; move them out" in message
    with pytest.raises(InputError, match=r"several label maps match it \(IXI002-Guys-0828-T1_"):
        _touch(tmp_path / "two", "IXI002-Guys-0828-T1.nii.gz")
        _touch(tmp_path / "two-labels", "IXI002-Guys-0828-T1_seg.nii.gz",
               "IXI002-Guys-0828-T1_dseg.nii.gz")  # fmt: skip
        records_from_layout("ixi", tmp_path / "two", labels=tmp_path / "two-labels")
    _touch(tmp_path / "t2", "IXI002-Guys-0828-T2.nii.gz")
    with pytest.raises(InputError, match=r"no IXI T1 volume .* reads T1 volumes only"):
        records_from_layout("ixi", tmp_path / "t2")


def test_layout_options_and_unknown_layouts_are_refused(ixi: Path, tmp_path: Path) -> None:
    assert set(DATASET_LAYOUTS) == {"ixi", "bids", "msseg", "retouch"}
    with pytest.raises(ConfigError, match="dataset layout 'adni' is unknown; known layouts: ixi"):
        records_from_layout("adni", ixi)
    with pytest.raises(ConfigError, match="--site-column is for the bids layout"):
        records_from_layout("ixi", ixi, site_column="site")
    with pytest.raises(InputError, match="nowhere: no such folder; give the ixi dataset's top"):
        records_from_layout("ixi", tmp_path / "nowhere")
    with pytest.raises(InputError, match="no-labels: no such folder; --labels takes the folder"):
        records_from_layout("ixi", ixi, labels=tmp_path / "no-labels")


def _participants(root: Path, text: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "participants.tsv").write_text(text)


@pytest.fixture()
def bids(tmp_path: Path) -> Path:
    """Three subjects at two sites; one with two sessions, one with a run entity."""
    root = tmp_path / "bids"
    _participants(root, "participant_id\tsite\tage\nsub-01\tsiemens\t30\n02\tge\t41\n"
                        "sub-03\tge\t25\nsub-04\t\t50\n")  # fmt: skip
    _touch(root, "dataset_description.json", "sub-01/anat/sub-01_T1w.nii.gz",
           "sub-01/anat/sub-01_T1w.json", "sub-01/anat/sub-01_T2w.nii.gz",
           "sub-02/ses-01/anat/sub-02_ses-01_T1w.nii.gz",
           "sub-02/ses-02/anat/sub-02_ses-02_T1w.nii", "sub-03/anat/sub-03_run-1_T1w.nii.gz",
           "sourcedata/raw/sub-01_T1w.nii.gz", ".git/sub-09_T1w.nii.gz")  # fmt: skip
    pipeline = "derivatives/fastseg"
    _touch(root, f"{pipeline}/sub-01/anat/sub-01_desc-tissue_dseg.nii.gz",
           f"{pipeline}/sub-02/ses-02/anat/sub-02_ses-02_dseg.nii.gz",
           f"{pipeline}/sub-02/ses-02/anat/sub-02_ses-02_space-MNI152NLin2009cAsym_dseg.nii.gz",
           f"{pipeline}/sub-03/anat/sub-03_run-2_dseg.nii.gz",
           f"{pipeline}/sub-03/anat/sub-03_run-1_space-orig_dseg.nii.gz")  # fmt: skip
    return root


def test_bids_reads_sites_from_participants_and_labels_from_derivatives(bids: Path) -> None:
    listing = records_from_layout("bids", bids)
    seg = bids / "derivatives" / "fastseg"
    assert [(r.subject, r.site, r.image, r.label) for r in listing.records] == [
        ("sub-01", "siemens", (bids / "sub-01/anat/sub-01_T1w.nii.gz").resolve(),
         (seg / "sub-01/anat/sub-01_desc-tissue_dseg.nii.gz").resolve()),
        ("sub-02_ses-01", "ge", (bids / "sub-02/ses-01/anat/sub-02_ses-01_T1w.nii.gz").resolve(),
         None),
        ("sub-02_ses-02", "ge", (bids / "sub-02/ses-02/anat/sub-02_ses-02_T1w.nii").resolve(),
         (seg / "sub-02/ses-02/anat/sub-02_ses-02_dseg.nii.gz").resolve()),
        ("sub-03", "ge", (bids / "sub-03/anat/sub-03_run-1_T1w.nii.gz").resolve(),
         (seg / "sub-03/anat/sub-03_run-1_space-orig_dseg.nii.gz").resolve()),
    ]  # fmt: skip
    assert listing.notes == (
        "1 of 4 T1w volume(s) have no _dseg label map",
        "skipped 1 _dseg map(s) in a template space (space-...)",
    )


def test_bids_site_column_and_one_pipeline(bids: Path, tmp_path: Path) -> None:
    _participants(bids, "participant_id\tscanner\nsub-01\tA\nsub-02\tB\nsub-03\tB\n")
    other = bids / "derivatives" / "other" / "sub-01" / "anat"
    _touch(other, "sub-01_dseg.nii.gz")
    with pytest.raises(InputError, match=r"several label maps match it .* pick one derivatives"):
        records_from_layout("bids", bids, site_column="scanner")
    listing = records_from_layout(
        "bids", bids, site_column="scanner", labels=bids / "derivatives" / "other"
    )
    assert [(r.subject, r.site) for r in listing.records] == [
        ("sub-01", "A"), ("sub-02_ses-01", "B"), ("sub-02_ses-02", "B"), ("sub-03", "B")
    ]  # fmt: skip
    assert [r.label is not None for r in listing.records] == [True, False, False, False]
    assert listing.notes == ("3 of 4 T1w volume(s) have no _dseg label map",)


def test_bids_without_derivatives_has_no_labels_and_no_notes(tmp_path: Path) -> None:
    root = tmp_path / "plain"
    _participants(root, "participant_id\tsite\nsub-a\tx\nsub-b\ty\n")
    _touch(root, "sub-a/anat/sub-a_T1w.nii.gz", "sub-b/anat/sub-b_T1w.nii.gz")
    listing = records_from_layout("bids", root)
    assert [(r.subject, r.site, r.label) for r in listing.records] == [
        ("sub-a", "x", None), ("sub-b", "y", None)
    ]  # fmt: skip
    assert listing.notes == ()


@pytest.mark.parametrize(
    ("tsv", "files", "message"),
    [
        (None, [], r"participants.tsv does not exist; the bids layout reads each subject's site "
                   r"from its 'site' column \(--site-column\)"),
        ("participant_id\tgroup\nsub-01\tx\n", [],
         r"participants.tsv: no column 'site'; it has the columns participant_id, group; choose "
         r"the site column with --site-column"),
        ("participant\tsite\nsub-01\tx\n", [], "no column 'participant_id'; it has the columns"),
        ("participant_id\tsite\nsub-01\tx\n", ["sub-02/anat/sub-02_T1w.nii.gz",
         "sub-05/anat/sub-05_T1w.nii.gz"], r"participants.tsv: no row for sub-02, sub-05; give "),
        ("participant_id\tsite\nsub-01\tn/a\nsub-02\t\n", ["sub-02/anat/sub-02_T1w.nii.gz"],
         r"an empty 'site' value for sub-01, sub-02; give every subject"),
        ("participant_id\tsite\nsub-01\tx\nsub-02\t\n", ["sub-02/anat/sub-02_T1w.nii.gz",
         "sub-03/anat/sub-03_T1w.nii.gz"], "no row for sub-03; an empty 'site' value for sub-02"),
        ("participant_id\tsite\nsub-01\tx\n", ["sub-01/func/sub-01_T1w.nii.gz",
         "sub-01/anat/sub-02_T1w.nii.gz", "sub-01/ses-1/anat/sub-01_ses-2_T1w.nii.gz",
         "extra_T1w.nii.gz"],
         r"4 T1w file\(s\) lie outside sub-\*/\[ses-\*/\]anat/ or name another subject or "
         r"session than their folders: extra_T1w.nii.gz, sub-01/anat/sub-02_T1w.nii.gz, "
         r"sub-01/func/sub-01_T1w.nii.gz, sub-01/ses-1/anat/sub-01_ses-2_T1w.nii.gz; move"),
        ("participant_id\tsite\nsub-01\tx\n", ["sub-01/anat/sub-01_run-2_T1w.nii.gz"],
         r"several T1w volumes for one subject and session: sub-01 \(sub-01_T1w.nii.gz, "
         r"sub-01_run-2_T1w.nii.gz\); the bids layout takes one per session"),
        # A row with more fields than the header (a stray tab): every such line, the file named.
        ("participant_id\tsite\nsub-01\tx\textra\nsub-02\ty\nsub-03\tz\t\t\n", [],
         r"participants.tsv: line\(s\) 2, 4 have more fields than the header \(2 columns\); "
         r"remove the extra tabs or name the extra columns in the header"),
        # One participant twice (also as 01 and sub-01): refused with both lines.
        ("participant_id\tsite\nsub-01\tx\nsub-02\ty\n01\tz\nsub-02\ty\n", [],
         r"participants.tsv: participant_id listed more than once: sub-01 \(lines 2 and 4\), "
         r"sub-02 \(lines 3 and 5\); keep one row per participant"),
    ],
)  # fmt: skip
def test_bids_errors(tmp_path: Path, tsv: str | None, files: list[str], message: str) -> None:
    root = tmp_path / "ds"
    _touch(root, "sub-01/anat/sub-01_T1w.nii.gz", *files)
    if tsv is not None:
        _participants(root, tsv)
    with pytest.raises(InputError, match=message):
        records_from_layout("bids", root)


def test_bids_sessions_of_one_participant_share_a_group(bids: Path) -> None:
    listing = records_from_layout("bids", bids)
    assert [(r.subject, r.group) for r in listing.records] == [
        ("sub-01", "sub-01"), ("sub-02_ses-01", "sub-02"), ("sub-02_ses-02", "sub-02"),
        ("sub-03", "sub-03"),
    ]  # fmt: skip


def test_bids_label_desc_picks_one_map_of_a_pipeline_that_writes_several(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _participants(root, "participant_id\tsite\nsub-01\tx\nsub-02\ty\n")
    anat = "derivatives/fmriprep/sub-{0}/anat/sub-{0}_"
    for sub in ("01", "02"):
        _touch(root, f"sub-{sub}/anat/sub-{sub}_T1w.nii.gz", *(anat.format(sub) + name for name in
               ("dseg.nii.gz", "desc-aseg_dseg.nii.gz", "desc-aparcaseg_dseg.nii.gz")))  # fmt: skip
    with pytest.raises(InputError) as info:
        records_from_layout("bids", root)
    message = str(info.value)
    assert "sub-01_T1w.nii.gz: several label maps match it (" in message
    assert message.endswith(
        "pick one derivatives pipeline with --labels ROOT/derivatives/PIPELINE, or one kind of "
        "map with --label-desc DESC (here: aparcaseg, aseg, none)"
    )
    fmriprep = root / "derivatives" / "fmriprep"
    for desc, name in (("aseg", "desc-aseg_dseg"), (NO_DESC, "dseg")):
        listing = records_from_layout("bids", root, label_desc=desc)
        assert [r.label for r in listing.records] == [
            (fmriprep / f"sub-{sub}/anat/sub-{sub}_{name}.nii.gz").resolve() for sub in ("01", "02")
        ]
    listing = records_from_layout("bids", root, label_desc="tissue")
    assert [r.label for r in listing.records] == [None, None]
    assert listing.notes == ("2 of 2 T1w volume(s) have no _dseg label map",)
    with pytest.raises(ConfigError, match="--label-desc is for the bids layout; ixi pairs labels"):
        records_from_layout("ixi", root, label_desc="aseg")


def test_ixi_labels_beside_the_images_without_labels_point_to_labels(tmp_path: Path) -> None:
    _touch(tmp_path, "IXI002-Guys-0828-T1.nii.gz", "IXI002-Guys-0828-T1_seg.nii.gz",
           "IXI012-HH-1211-T1.nii.gz", "IXI012-HH-1211-T1_dseg.nii.gz", "notes.nii")  # fmt: skip
    with pytest.raises(InputError) as info:
        records_from_layout("ixi", tmp_path)
    assert str(info.value).endswith(
        "IXI002-Guys-0828-T1_seg.nii.gz, IXI012-HH-1211-T1_dseg.nii.gz, notes.nii; move them out "
        f"of the folder or list the subjects in a CSV (--csv); 2 of them look like label maps: "
        f"pass --labels {tmp_path}"
    )
    (tmp_path / "notes.nii").unlink()
    listing = records_from_layout("ixi", tmp_path, labels=tmp_path)  # what the message advises
    assert [r.label is not None for r in listing.records] == [True, True]
