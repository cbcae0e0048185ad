"""Tests of segrenorm.volumes.formats' atomic writes: no clobbering, no temp files, modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segrenorm.atomic import write_text_atomic
from segrenorm.errors import InputError
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.readwrite import load_image, save_image

SHAPE = (8, 9, 10)
GEOMETRY = Geometry.from_affine(np.diag([-1.2, 0.9, 2.5, 1.0]), SHAPE)


def volume() -> np.ndarray:
    return np.random.default_rng(0).normal(500.0, 120.0, size=SHAPE).astype(np.int16)


def test_save_refuses_to_overwrite(tmp_path: Path) -> None:
    source = load_image(save_image(volume(), tmp_path / "in.nii.gz", geometry=GEOMETRY))
    before = (tmp_path / "in.nii.gz").read_bytes()
    with pytest.raises(InputError, match=r"in\.nii\.gz: the file already exists.*overwrite=True"):
        save_image(source.data + 1, tmp_path / "in.nii.gz", geometry=source.geometry)
    assert (tmp_path / "in.nii.gz").read_bytes() == before
    save_image(source.data + 1, tmp_path / "in.nii.gz", geometry=source.geometry, overwrite=True)
    np.testing.assert_array_equal(load_image(tmp_path / "in.nii.gz").data, source.data + 1)


def test_mhd_refuses_to_clobber_a_foreign_raw_file(tmp_path: Path) -> None:
    (tmp_path / "scan.raw").write_bytes(b"someone else's data")
    geometry = GEOMETRY
    with pytest.raises(InputError, match=r"scan\.raw: the file already exists"):
        save_image(volume(), tmp_path / "scan.mhd", geometry=geometry)
    assert sorted(os.listdir(tmp_path)) == ["scan.raw"]


def test_atomic_write_leaves_no_temp_on_success(tmp_path: Path) -> None:
    geometry = GEOMETRY
    out_dir = tmp_path / "new" / "folder"
    save_image(volume(), out_dir / "a.nii.gz", geometry=geometry)
    save_image(volume(), out_dir / "b.mhd", geometry=geometry)
    assert sorted(os.listdir(out_dir)) == ["a.nii.gz", "b.mhd", "b.raw"]
    assert load_image(out_dir / "b.mhd").data.shape == SHAPE


def test_atomic_write_leaves_nothing_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def half_write(image: nib.Nifti1Image, filename: str) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", half_write)
    geometry = GEOMETRY
    with pytest.raises(OSError, match="disk full"):
        save_image(volume(), tmp_path / "out.nii.gz", geometry=geometry)
    assert os.listdir(tmp_path) == []


def test_atomic_files_get_ordinary_permissions(tmp_path: Path) -> None:
    # mkstemp makes owner-only files; what is renamed into place follows the umask instead.
    old = os.umask(0o022)
    try:
        written = write_text_atomic(tmp_path / "report.md", "# report\n")
        save_image(
            volume(),
            tmp_path / "scan.nii.gz",
            geometry=GEOMETRY,
        )
        os.umask(0o077)
        private = write_text_atomic(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "scan.nii.gz").stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
