"""Tests of segrenorm.volumes.paths: image suffixes, stems and expanding inputs into files."""

from __future__ import annotations

from pathlib import Path

import pytest

from segrenorm.errors import InputError
from segrenorm.volumes.paths import find_images, image_stem, image_suffix


def test_image_suffix_and_stem() -> None:
    assert image_suffix("a/B.NII.GZ") == ".nii.gz"
    assert image_suffix(Path("x.nrrd")) == ".nrrd"
    assert image_stem("dir/sub-01_T1w.nii.gz") == "sub-01_T1w"
    with pytest.raises(InputError, match=r"scan\.tar\.gz: not a supported image file"):
        image_suffix("scan.tar.gz")


def test_find_images_folder_glob_and_files(tmp_path: Path) -> None:
    for name in ["b.nii.gz", "a.mha", "c.nrrd", "notes.txt", ".hidden.nii"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.nii").write_bytes(b"x")
    assert find_images([tmp_path]) == [tmp_path / n for n in ["a.mha", "b.nii.gz", "c.nrrd"]]
    assert find_images([str(tmp_path / "*.n*")]) == [tmp_path / "b.nii.gz", tmp_path / "c.nrrd"]
    listed = find_images([tmp_path / "c.nrrd", tmp_path, tmp_path / "sub" / "deep.nii"])
    assert listed == [tmp_path / n for n in ["c.nrrd", "a.mha", "b.nii.gz", "sub/deep.nii"]]


def test_find_images_refusals(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"missing: no such file or folder"):
        find_images([tmp_path / "missing"])
    with pytest.raises(InputError, match=r"\*\.mha: the pattern matches no image"):
        find_images([str(tmp_path / "*.mha")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: the folder holds no image"):
        find_images([tmp_path / "empty"])
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match=r"notes\.txt: not a supported image file"):
        find_images([tmp_path / "notes.txt"])
    with pytest.raises(InputError, match="no input images given"):
        find_images([])
