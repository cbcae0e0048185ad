"""Tests of header-only reading (read_geometry) and the header checks every loader applies."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from segrenorm.errors import InputError
from segrenorm.volumes.headers import MAX_VOXELS, check_shape
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.readwrite import load_image, load_label, read_geometry, save_image

SHAPE = (6, 7, 5)
LOADERS: list[Callable[[Path], object]] = [load_image, load_label, read_geometry]


def oblique_affine() -> np.ndarray:
    """Rotated, x-flipped, anisotropic, shifted: nothing lines up by accident."""
    angle = np.deg2rad(25.0)
    affine = np.eye(4)
    affine[:3, :3] = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
    ) @ np.diag([-1.1, 0.8, 2.2])
    affine[:3, 3] = [31.0, -7.5, 4.25]
    return affine


def labels(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return (np.arange(int(np.prod(shape))).reshape(shape) % 3).astype(np.int16)


def nifti(path: Path, data: np.ndarray | None = None, *, scaled: bool = False) -> Path:
    image = nib.Nifti1Image(labels() if data is None else data, oblique_affine())
    if scaled:
        image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, str(path))
    return path


def itk(path: Path) -> Path:
    geometry = Geometry.from_affine(oblique_affine(), SHAPE, dtype="int16")
    save_image(labels(), path, geometry=geometry)
    return path


def same_geometry(a: Geometry, b: Geometry) -> None:
    np.testing.assert_array_equal(a.affine, b.affine)
    assert (a.shape, a.spacing, a.dtype, a.axcodes, a.fmt) == (
        b.shape,
        b.spacing,
        b.dtype,
        b.axcodes,
        b.fmt,
    )
    assert (a.header is None) == (b.header is None)
    if a.header is not None:
        assert a.header == b.header


@pytest.mark.parametrize("name", ["t1.nii", "t1.nii.gz", "t1.mha", "t1.mhd", "t1.nrrd"])
def test_read_geometry_equals_loaded_geometry(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    if name.startswith("t1.nii"):
        nifti(path)
    else:
        itk(path)
    geometry = read_geometry(path)
    same_geometry(geometry, load_image(path).geometry)
    assert geometry.shape == SHAPE
    np.testing.assert_allclose(geometry.affine, oblique_affine(), atol=1e-5)
    assert geometry.dtype == "int16"
    assert geometry.fmt == ("nifti" if ".nii" in name else "itk")


def test_read_geometry_of_4d_one_volume_and_scaled_nifti(tmp_path: Path) -> None:
    four = nifti(tmp_path / "one.nii.gz", labels((*SHAPE, 1)))
    same_geometry(read_geometry(four), load_image(four).geometry)
    assert read_geometry(four).shape == SHAPE
    scaled = nifti(tmp_path / "scaled.nii", scaled=True)
    assert read_geometry(scaled).dtype == "float32"  # scaled integers save as floats
    same_geometry(read_geometry(scaled), load_image(scaled).geometry)


def test_read_geometry_of_4d_mha_with_one_volume(tmp_path: Path) -> None:
    image = sitk.GetImageFromArray(labels((1, *SHAPE[::-1])), isVector=False)
    assert image.GetDimension() == 4
    path = tmp_path / "one.mha"
    sitk.WriteImage(image, str(path))
    same_geometry(read_geometry(path), load_image(path).geometry)
    assert read_geometry(path).shape == SHAPE


def test_read_geometry_reads_no_voxels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the voxel readers of nibabel and SimpleITK made to fail, only loading fails."""
    paths = [nifti(tmp_path / "t1.nii"), nifti(tmp_path / "t1.nii.gz"), itk(tmp_path / "t1.mha")]

    def no_voxels(*args: object, **kwargs: object) -> None:
        raise AssertionError("voxels were read")

    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", no_voxels)
    monkeypatch.setattr(sitk.ImageFileReader, "Execute", no_voxels)
    for path in paths:
        assert read_geometry(path).shape == SHAPE
        with pytest.raises(AssertionError, match="voxels were read"):
            load_image(path)


def test_read_geometry_checks_the_size(tmp_path: Path) -> None:
    cut = tmp_path / "cut.nii"
    cut.write_bytes(nifti(tmp_path / "full.nii").read_bytes()[:352])
    with pytest.raises(InputError, match=r"cut\.nii: the file is truncated .*declares 772 bytes"):
        read_geometry(cut)


def test_read_geometry_missing_and_folder(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"absent\.nii: no such file"):
        read_geometry(tmp_path / "absent.nii")
    (tmp_path / "dir.nii").mkdir()
    with pytest.raises(InputError, match=r"dir\.nii: is a folder"):
        read_geometry(tmp_path / "dir.nii")


# --------------------------------------------------------------------------- header checks


def patched(source: Path, target: Path, offset: int, fmt: str, *values: float) -> Path:
    """Copy a .nii with ``struct.pack(fmt, *values)`` written at byte ``offset``."""
    data = bytearray(source.read_bytes())
    struct.pack_into(fmt, data, offset, *values)
    target.write_bytes(bytes(data))
    return target


def refused_by_all(path: Path, pattern: str) -> None:
    for loader in LOADERS:
        with pytest.raises(InputError, match=pattern) as info:
            loader(path)
        assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("offset", "fmt", "values", "pattern"),
    [
        (40, "<4h", (3, 4000, 4000, 4000), r"64,000,000,000 voxels, more than the 2,147,483,648"),
        (40, "<4h", (3, 6, 0, 5), r"declares the grid \(6, 0, 5\), with empty axes"),
        (40, "<4h", (3, 6, -7, 5), r"declares the grid \(6, -7, 5\), with empty axes"),
        (40, "<5h", (4, 6, 7, 5, 3), r"the image is 4D with shape \(6, 7, 5, 3\).*fslsplit"),
        (40, "<6h", (5, 6, 7, 5, 1, 1), r"the image is 5D"),
        (40, "<h", (9,), r"truncated or corrupt|dimensions \(dim\[0\]\)"),
        (70, "<h", (17,), r"voxel type unknown is not a real scalar .*datatype code 17"),
        (70, "<h", (128,), r"voxel type RGB is not a real scalar .*datatype code 128"),
        (80, "<f", (0.0,), r"voxel sizes \(pixdim\) \[0\.0, .*include 0, NaN or Inf"),
        (84, "<f", (float("nan"),), r"voxel sizes \(pixdim\) .*nan.*include 0, NaN or Inf"),
        (88, "<f", (float("inf"),), r"voxel sizes \(pixdim\) .*inf.*include 0, NaN or Inf"),
        (108, "<f", (float("nan"),), r"data offset \(vox_offset\) is nan"),
        (108, "<f", (1e9,), r"truncated or corrupt: its header declares 1,000,000,420 bytes"),
        (280, "<f", (float("nan"),), r"affine holds NaN or Inf; fix the header"),
        (280, "<3f", (0.0, 0.0, 0.0), r"affine is singular; fix the header"),
    ],
)
def test_nifti_header_refused_by_every_loader(
    tmp_path: Path, offset: int, fmt: str, values: tuple[float, ...], pattern: str
) -> None:
    source = nifti(tmp_path / "good.nii")
    refused_by_all(patched(source, tmp_path / "bad.nii", offset, fmt, *values), pattern)


def test_nifti_header_refused_in_gzip_too(tmp_path: Path) -> None:
    source = nifti(tmp_path / "good.nii")
    bad = patched(source, tmp_path / "bad.nii", 40, "<4h", 3, 4000, 4000, 4000)
    gz = tmp_path / "bad.nii.gz"
    gz.write_bytes(gzip.compress(bad.read_bytes()))
    refused_by_all(gz, r"bad\.nii\.gz: .*64,000,000,000 voxels")


def test_max_voxels_is_the_bound(tmp_path: Path) -> None:
    """2**31 voxels pass the count, one more does not; a file just under it fails the size."""
    check_shape(tmp_path / "x.nii", (MAX_VOXELS, 1, 1))
    with pytest.raises(InputError, match=r"x\.nii: .*2,147,483,649 voxels, more than"):
        check_shape(tmp_path / "x.nii", (MAX_VOXELS + 1, 1, 1))
    source = nifti(tmp_path / "good.nii")
    under = patched(source, tmp_path / "under.nii", 40, "<4h", 3, 2**15 - 1, 2**15 - 1, 2)
    refused_by_all(under, r"under\.nii: the file is truncated or corrupt: its header declares")


@pytest.mark.parametrize("name", ["cut.nii.gz", "short.nii.gz"])
def test_gzip_smaller_than_declared(tmp_path: Path, name: str) -> None:
    """The trailer's uncompressed size (ISIZE) refuses a .nii.gz declaring more than it holds."""
    source = nifti(tmp_path / "good.nii")
    declared = 772 if name == "cut.nii.gz" else 352 + 6 * 7 * 500 * 2
    if name == "cut.nii.gz":
        payload = source.read_bytes()[:600]  # a whole gzip file of a cut NIfTI
    else:
        payload = patched(source, tmp_path / "long.nii", 40, "<4h", 3, 6, 7, 500).read_bytes()
    path = tmp_path / name
    path.write_bytes(gzip.compress(payload))
    refused_by_all(path, rf"declares {declared:,} bytes of image but it inflates to {len(payload)}")


def test_gzip_of_several_members_is_counted_not_refused(tmp_path: Path) -> None:
    """bgzip-style files hold several gzip members: ISIZE is only the last one's size."""
    raw = nifti(tmp_path / "good.nii").read_bytes()
    path = tmp_path / "members.nii.gz"
    path.write_bytes(gzip.compress(raw[:500]) + gzip.compress(raw[500:]))
    np.testing.assert_array_equal(load_image(path).data, labels())
    assert read_geometry(path).shape == SHAPE


def test_gzip_bomb_bound(tmp_path: Path) -> None:
    """A declared size no deflate stream of this length can reach is refused unread."""
    source = nifti(tmp_path / "good.nii")
    big = patched(source, tmp_path / "big.nii", 40, "<4h", 3, 1000, 1000, 1000)
    bad = patched(big, big, 70, "<2h", 64, 64)  # float64: 8e9 bytes, beyond what ISIZE tells
    path = tmp_path / "big.nii.gz"
    path.write_bytes(gzip.compress(bad.read_bytes()))
    refused_by_all(path, r"big\.nii\.gz: .*declares 8,000,000,352 bytes .*at most")


def itk_text_header(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    split = data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    return data[:split].decode("latin-1"), data[split:]


@pytest.mark.parametrize(
    ("old", "new", "pattern"),
    [
        (
            "DimSize = 6 7 5",
            "DimSize = 6 7 500",
            r"declares 42,[0-9]{3} bytes of image but the file",
        ),
        ("DimSize = 6 7 5", "DimSize = 4000 4000 4000", r"64,000,000,000 voxels"),
        ("ElementSpacing = ", "ElementSpacing = 0 ", r"voxel sizes \(spacing\) \[0\.0"),
        ("ElementType = MET_SHORT", "ElementType = MET_DOUBLE_ARRAY", r"vector of 64-bit float"),
        ("ElementType = MET_SHORT", "ElementType = MET_NONSENSE", r"truncated or corrupt"),
        ("NDims = 3", "NDims = 9", r"NDims = '9'; the header is corrupt"),
        ("NDims = 3", "NDims = -1", r"NDims = '-1'; the header is corrupt"),  # segfaulted ITK
        ("NDims = 3", "NDims = 1e30", r"NDims = '1e30'; the header is corrupt"),
        ("LOCAL", "f%d.raw 1 3 0", r"pattern 'f%d\.raw 1 3 0' .*non-zero step"),  # SIGFPE
    ],
)
def test_mha_header_refused(tmp_path: Path, old: str, new: str, pattern: str) -> None:
    text, data = itk_text_header(itk(tmp_path / "good.mha"))
    assert old in text
    path = tmp_path / "bad.mha"
    path.write_bytes(text.replace(old, new, 1).encode("latin-1") + data)
    refused_by_all(path, rf"bad\.mha: .*{pattern}")


def test_mhd_with_short_raw_file_refused(tmp_path: Path) -> None:
    path = itk(tmp_path / "scan.mhd")
    raw = tmp_path / "scan.raw"
    raw.write_bytes(raw.read_bytes()[:100])
    refused_by_all(
        path, r"scan\.mhd: .*declares 420 bytes of image but its data file .*raw holds 100"
    )


@pytest.mark.parametrize(("esize", "loads"), [(16, True), (1000, False), (8, False)])
def test_header_extension_sizes(tmp_path: Path, esize: int, loads: bool) -> None:
    """An extension must end by the data offset: nibabel would read whatever size it says."""
    source = bytearray(nifti(tmp_path / "good.nii").read_bytes())
    struct.pack_into("<f", source, 108, 368.0)  # room for one 16-byte extension
    extension = b"\x01\x00\x00\x00" + struct.pack("<ii", esize, 0) + b"\x00" * 8
    path = tmp_path / "ext.nii"
    path.write_bytes(bytes(source[:348]) + extension + bytes(source[352:]))
    if loads:
        np.testing.assert_array_equal(load_image(path).data, labels())
        same_geometry(read_geometry(path), load_image(path).geometry)
    else:
        refused_by_all(path, rf"ext\.nii: a header extension of {esize} bytes runs past the data")


def test_nifti2_geometry(tmp_path: Path) -> None:
    path = tmp_path / "two.nii"
    nib.save(nib.Nifti2Image(labels(), oblique_affine()), str(path))
    same_geometry(read_geometry(path), load_image(path).geometry)
    np.testing.assert_array_equal(load_label(path).data, labels())
    bad = bytearray(path.read_bytes())
    struct.pack_into("<q", bad, 24, 2**40)  # dim[2], int64 in NIfTI-2
    (tmp_path / "big2.nii").write_bytes(bytes(bad))
    refused_by_all(tmp_path / "big2.nii", r"big2\.nii: .*voxels, more than")
