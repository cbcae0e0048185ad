"""Tests of segrenorm.volumes.readwrite: validation on load, labels and round trips."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from segrenorm.errors import ConfigError, InputError
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.readwrite import load_image, load_label, save_image, save_label

SHAPE = (8, 9, 10)


def oblique_affine() -> np.ndarray:
    """A rotated, x-flipped, anisotropic affine with an offset: nothing lines up by accident."""
    angle = np.deg2rad(20.0)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.2, 0.9, 2.5])
    affine[:3, 3] = [40.0, -12.5, 7.25]
    return affine


def volume(seed: int = 0, dtype: str = "int16") -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(500.0, 120.0, size=SHAPE)).astype(dtype)


def write_nifti(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray | None = None,
    *,
    qcode: int = 1,
    scode: int = 4,
    units: tuple[str, str] = ("mm", "msec"),
) -> Path:
    affine = oblique_affine() if affine is None else affine
    header = nib.Nifti1Header()
    header.set_data_dtype(data.dtype)
    header.set_xyzt_units(*units)
    image = nib.Nifti1Image(data, affine, header=header)
    image.header.set_qform(affine, code=qcode)
    image.header.set_sform(affine, code=scode)
    nib.save(image, str(path))
    return path


def read_nifti(path: Path) -> nib.Nifti1Image:
    image = nib.load(str(path))
    assert isinstance(image, nib.Nifti1Image)
    return image


# ------------------------------------------------------------------------------- bad inputs


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"absent\.nii\.gz: no such file"):
        load_image(tmp_path / "absent.nii.gz")


def test_folder_instead_of_file(tmp_path: Path) -> None:
    folder = tmp_path / "scan.nii"
    folder.mkdir()
    with pytest.raises(InputError, match=r"scan\.nii: is a folder"):
        load_image(folder)


def test_text_file_named_nii_gz(tmp_path: Path) -> None:
    path = tmp_path / "notes.nii.gz"
    path.write_text("this is not an image\n" * 40)
    with pytest.raises(
        InputError, match=r"notes\.nii\.gz: the file is truncated or corrupt, or not NIfTI"
    ):
        load_image(path)


def test_text_file_named_mha(tmp_path: Path) -> None:
    path = tmp_path / "notes.mha"
    path.write_text("this is not an image\n" * 40)
    with pytest.raises(InputError, match=r"notes\.mha: the file is truncated or corrupt"):
        load_image(path)


@pytest.mark.parametrize("name", ["scan.png", "scan.txt", "scan.gz", ".nii"])
def test_unsupported_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\x00" * 400)
    with pytest.raises(InputError, match=r"not a supported image file.*\.nii\.gz"):
        load_image(path)


@pytest.mark.parametrize(
    ("name", "keep"), [("cut.nii.gz", 0.5), ("cut.nii.gz", -200), ("cut.nii", 0.5)]
)
def test_truncated_nifti(tmp_path: Path, name: str, keep: float) -> None:
    whole = write_nifti(tmp_path / f"whole{name[3:]}", volume())
    raw = whole.read_bytes()
    cut = tmp_path / name
    cut.write_bytes(raw[: int(len(raw) * keep) if keep > 0 else int(keep)])
    with pytest.raises(InputError, match=rf"{name}: the file is truncated or corrupt.*re-copy"):
        load_image(cut)


def test_truncated_gzip_is_detected_by_nibabel_only_on_read(tmp_path: Path) -> None:
    # Guards the reason for the eager read: the header of a cut .nii.gz still parses.
    whole = write_nifti(tmp_path / "whole.nii.gz", volume())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(whole.read_bytes()[:-200])
    assert read_nifti(cut).shape == SHAPE
    with pytest.raises(EOFError):
        gzip.decompress(cut.read_bytes())


def test_2d_nifti_refused(tmp_path: Path) -> None:
    path = tmp_path / "slice.nii"
    nib.save(nib.Nifti1Image(np.arange(80, dtype=np.float32).reshape(8, 10), np.eye(4)), path)
    with pytest.raises(InputError, match=r"slice\.nii: the image is 2D with shape \(8, 10\)"):
        load_image(path)


def test_2d_itk_refused(tmp_path: Path) -> None:
    path = tmp_path / "slice.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(80, dtype=np.float32).reshape(8, 10)), path)
    with pytest.raises(InputError, match=r"slice\.mha: the image is 2D"):
        load_image(path)


def test_true_4d_refused(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "series.nii.gz", np.stack([volume(0), volume(1)], axis=-1))
    with pytest.raises(InputError, match=r"series\.nii\.gz: the image is 4D.*fslsplit"):
        load_image(path)


def test_4d_with_one_volume_is_squeezed(tmp_path: Path) -> None:
    data = volume()
    path = write_nifti(tmp_path / "single.nii.gz", data[..., None])
    image = load_image(path)
    assert image.data.shape == SHAPE
    assert image.geometry.shape == SHAPE
    np.testing.assert_array_equal(image.data, data.astype(np.float32))


@pytest.mark.parametrize(
    ("bad", "message"), [(np.nan, "1 NaN and 0 Inf"), (np.inf, "0 NaN and 1 Inf")]
)
def test_non_finite_voxels(tmp_path: Path, bad: float, message: str) -> None:
    data = volume(dtype="float32")
    data[1, 2, 3] = bad
    path = write_nifti(tmp_path / "nonfinite.nii", data)
    with pytest.raises(InputError, match=rf"nonfinite\.nii: {message} voxels"):
        load_image(path)


@pytest.mark.parametrize("value", [0, 7])
def test_constant_volume(tmp_path: Path, value: int) -> None:
    path = write_nifti(tmp_path / "flat.nii.gz", np.full(SHAPE, value, dtype=np.int16))
    with pytest.raises(InputError, match=rf"flat\.nii\.gz: every voxel has the value {value};"):
        load_image(path)


def test_complex_voxels_refused(tmp_path: Path) -> None:
    path = write_nifti(tmp_path / "complex.nii", volume(dtype="float32").astype(np.complex64))
    with pytest.raises(InputError, match=r"complex\.nii: voxel type complex64 is not a real"):
        load_image(path)


def test_vector_itk_image_refused(tmp_path: Path) -> None:
    path = tmp_path / "rgb.mha"
    rgb = np.zeros((*SHAPE[::-1], 3), dtype=np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(rgb, isVector=True), path)
    with pytest.raises(InputError, match=r"rgb\.mha: voxels have 3 components"):
        load_image(path)


# ------------------------------------------------------------------------------- labels


def test_label_loads_as_uint8_and_accepts_float_storage(tmp_path: Path) -> None:
    labels = np.random.default_rng(0).integers(0, 4, size=SHAPE)
    path = write_nifti(tmp_path / "seg.nii.gz", labels.astype(np.float32))
    image = load_image(write_nifti(tmp_path / "t1.nii.gz", volume()))
    label = load_label(path, n_classes=4, like=image)
    assert label.data.dtype == np.uint8
    np.testing.assert_array_equal(label.data, labels)
    assert label.geometry.matches(image.geometry)


def test_label_above_255_becomes_int16_and_empty_map_is_accepted(tmp_path: Path) -> None:
    big = np.zeros(SHAPE, dtype=np.int32)
    big[0, 0, 0] = 300
    assert load_label(write_nifti(tmp_path / "big.nii", big)).data.dtype == np.int16
    empty = load_label(write_nifti(tmp_path / "empty.nii", np.zeros(SHAPE, np.uint8)))
    assert not empty.data.any()


def test_label_shape_differs(tmp_path: Path) -> None:
    image = load_image(write_nifti(tmp_path / "t1.nii.gz", volume()))
    path = write_nifti(tmp_path / "seg.nii.gz", np.zeros((8, 9, 11), dtype=np.uint8))
    with pytest.raises(
        InputError, match=r"seg\.nii\.gz: label shape \(8, 9, 11\) differs from .*t1\.nii\.gz shape"
    ):
        load_label(path, like=image)


def test_label_affine_differs(tmp_path: Path) -> None:
    image = load_image(write_nifti(tmp_path / "t1.nii.gz", volume()))
    shifted = oblique_affine()
    shifted[0, 3] += 0.5
    path = write_nifti(tmp_path / "seg.nii.gz", np.zeros(SHAPE, dtype=np.uint8), shifted)
    with pytest.raises(
        InputError,
        match=r"seg\.nii\.gz: label affine .* differs from .*t1\.nii\.gz affine .*0\.5 mm",
    ):
        load_label(path, like=image)


def test_label_values_outside_classes(tmp_path: Path) -> None:
    labels = np.zeros(SHAPE, dtype=np.int16)
    labels[0, 0, 0], labels[1, 1, 1] = 5, 7
    path = write_nifti(tmp_path / "seg.nii", labels)
    with pytest.raises(InputError, match=r"seg\.nii: label values 5, 7 fall outside .*0\.\.3"):
        load_label(path, n_classes=4)
    labels[0, 0, 0] = -1
    write_nifti(tmp_path / "neg.nii", labels)
    with pytest.raises(InputError, match=r"neg\.nii: label values -1 fall outside"):
        load_label(tmp_path / "neg.nii")


def test_non_integer_labels(tmp_path: Path) -> None:
    labels = np.zeros(SHAPE, dtype=np.float32)
    labels[2, 2, 2] = 0.5
    path = write_nifti(tmp_path / "prob.nii.gz", labels)
    with pytest.raises(InputError, match=r"prob\.nii\.gz: .*whole numbers .*1 voxels such as 0\.5"):
        load_label(path)


def test_nan_label_and_bad_n_classes(tmp_path: Path) -> None:
    labels = np.zeros(SHAPE, dtype=np.float32)
    labels[0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"nanseg\.nii: 1 NaN and 0 Inf voxels"):
        load_label(write_nifti(tmp_path / "nanseg.nii", labels))
    with pytest.raises(ConfigError, match="n_classes=0 must be at least 1"):
        load_label(tmp_path / "nanseg.nii", n_classes=0)


# ------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".mha", ".mhd", ".nrrd"])
def test_round_trip_keeps_geometry_dtype_and_voxels(tmp_path: Path, suffix: str) -> None:
    source = load_image(write_nifti(tmp_path / "in.nii.gz", volume()))
    out = save_image(source.data, tmp_path / f"out{suffix}", geometry=source.geometry)
    again = load_image(out)
    geo, back = source.geometry, again.geometry
    np.testing.assert_allclose(back.affine, geo.affine, atol=1e-5)
    assert back.shape == geo.shape == SHAPE
    np.testing.assert_allclose(back.spacing, (1.2, 0.9, 2.5), atol=1e-5)
    assert back.axcodes == geo.axcodes == ("L", "A", "S")
    assert back.dtype == geo.dtype == "int16"
    np.testing.assert_array_equal(again.data, source.data)
    if suffix.startswith(".nii"):
        assert back.header is not None
        assert (int(back.header["qform_code"]), int(back.header["sform_code"])) == (1, 4)
        assert back.header.get_xyzt_units() == ("mm", "msec")
        assert back.fmt == "nifti"
    else:
        assert back.header is None and back.fmt == "itk"
        # a second pass through the ITK writer is stable too
        twice = save_image(again.data, tmp_path / f"twice{suffix}", geometry=back)
        np.testing.assert_allclose(load_image(twice).geometry.affine, geo.affine, atol=1e-5)


def test_itk_direction_and_origin_become_ras(tmp_path: Path) -> None:
    # Built by SimpleITK itself, so the expected world points come from ITK, not from our maths.
    image = sitk.GetImageFromArray(volume(dtype="float32").transpose(2, 1, 0).copy())
    angle = np.deg2rad(30.0)
    direction = np.array(
        [
            [np.cos(angle), 0.0, np.sin(angle)],
            [0.0, -1.0, 0.0],
            [np.sin(angle), 0.0, -np.cos(angle)],
        ]
    )
    image.SetDirection(direction.ravel().tolist())
    image.SetSpacing((0.7, 1.1, 3.0))
    image.SetOrigin((12.0, -30.0, 55.0))
    path = tmp_path / "itk.nrrd"
    sitk.WriteImage(image, path)
    loaded = load_image(path)
    for index in [(0, 0, 0), (7, 0, 0), (3, 8, 9)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = loaded.geometry.affine @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], [-lps[0], -lps[1], lps[2]], atol=1e-6)
    np.testing.assert_allclose(loaded.geometry.spacing, (0.7, 1.1, 3.0), atol=1e-9)
    # NIfTI written from the ITK geometry places voxels at the same world points (nibabel's view)
    out = save_image(loaded.data, tmp_path / "from_itk.nii.gz", geometry=loaded.geometry)
    nifti = read_nifti(out)
    np.testing.assert_allclose(nifti.affine, loaded.geometry.affine, atol=1e-4)
    assert (int(nifti.header["qform_code"]), int(nifti.header["sform_code"])) == (1, 1)


def test_scaled_nifti_defaults_to_float_output(tmp_path: Path) -> None:
    data = volume()
    image = nib.Nifti1Image(data, oblique_affine())
    image.header.set_slope_inter(0.5, 10.0)
    nib.save(image, tmp_path / "scaled.nii")
    source = load_image(tmp_path / "scaled.nii")
    np.testing.assert_allclose(source.data, data * 0.5 + 10.0)
    assert source.geometry.dtype == "float32"
    out = save_image(source.data, tmp_path / "out.nii", geometry=source.geometry)
    np.testing.assert_array_equal(load_image(out).data, source.data)


def test_sheared_affine_survives_in_sform(tmp_path: Path) -> None:
    sheared = oblique_affine()
    sheared[0, 1] += 0.3  # a qform (rotation + zooms) cannot hold a shear
    header = nib.Nifti1Header()
    header.set_qform(np.eye(4), code=1)
    geometry = Geometry.from_affine(sheared, SHAPE, header=header)
    out = save_image(volume(dtype="float32"), tmp_path / "shear.nii", geometry=geometry)
    loaded = read_nifti(out)
    np.testing.assert_allclose(loaded.affine, sheared, atol=1e-5)
    assert int(loaded.header["sform_code"]) == 2


def test_geometry_without_coded_transform_gets_aligned_sform(tmp_path: Path) -> None:
    geometry = Geometry.from_affine(oblique_affine(), SHAPE, header=nib.Nifti1Header())
    out = save_image(volume(dtype="float32"), tmp_path / "plain.nii", geometry=geometry)
    np.testing.assert_allclose(read_nifti(out).affine, oblique_affine(), atol=1e-5)


def test_integer_dtype_rounds_and_clips(tmp_path: Path) -> None:
    geometry = Geometry.from_affine(oblique_affine(), SHAPE)
    data = np.full(SHAPE, 3.6, dtype=np.float32)
    data[0, 0, 0], data[1, 0, 0] = -5.0, 300.0
    out = save_image(data, tmp_path / "u8.nrrd", geometry=geometry, dtype="uint8")
    loaded = load_image(out)
    assert loaded.geometry.dtype == "uint8"
    assert (loaded.data[0, 0, 0], loaded.data[1, 0, 0], loaded.data[2, 0, 0]) == (0, 255, 4)


def test_save_rejects_bad_dtype_shape_and_values(tmp_path: Path) -> None:
    geometry = Geometry.from_affine(oblique_affine(), SHAPE)
    with pytest.raises(ConfigError, match=r"dtype 'float16' cannot be saved; use one of"):
        save_image(volume(), tmp_path / "a.nii", geometry=geometry, dtype="float16")
    with pytest.raises(
        InputError, match=r"b\.nii: data shape \(8, 9\) differs from .*\(8, 9, 10\)"
    ):
        save_image(np.zeros((8, 9)), tmp_path / "b.nii", geometry=geometry)
    bad = volume(dtype="float32")
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"c\.nii: 1 NaN and 0 Inf voxels"):
        save_image(bad, tmp_path / "c.nii", geometry=geometry)
    with pytest.raises(InputError, match=r"d\.png: not a supported image file"):
        save_image(volume(), tmp_path / "d.png", geometry=geometry)
    assert sorted(os.listdir(tmp_path)) == []


def test_save_label_types_and_refusals(tmp_path: Path) -> None:
    geometry = Geometry.from_affine(oblique_affine(), SHAPE, dtype="float32")
    labels = np.random.default_rng(1).integers(0, 3, size=SHAPE).astype(np.float64)
    out = save_label(labels, tmp_path / "seg.nii.gz", geometry=geometry)
    stored = read_nifti(out)
    assert stored.get_data_dtype() == np.uint8
    assert stored.header.get_intent()[0] == "label"
    np.testing.assert_array_equal(load_label(out, n_classes=3).data, labels)
    with pytest.raises(InputError, match=r"frac\.nii: label data must be whole numbers"):
        save_label(labels + 0.25, tmp_path / "frac.nii", geometry=geometry)
    with pytest.raises(InputError, match=r"neg\.mha: label values must lie in 0\.\.32767, got -1"):
        save_label(labels - 1, tmp_path / "neg.mha", geometry=geometry)
