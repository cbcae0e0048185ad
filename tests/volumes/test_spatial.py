"""Tests of segrenorm.volumes.spatial: orientation, slicing, scaling, masks, resampling, padding."""

from __future__ import annotations

import numpy as np
import pytest

from segrenorm.errors import ConfigError, InputError
from segrenorm.vocabulary import SLICE_AXES
from segrenorm.volumes.images import Geometry, LabelMap, ScalarImage
from segrenorm.volumes.intensity import IntensityScaling, fit_scaling, foreground_mask
from segrenorm.volumes.spatial import (
    from_canonical,
    pad_to_shape,
    resample_to_spacing,
    resolve_slice_axis,
    round_up,
    slice_volume,
    stack_slices,
    to_canonical,
    unpad,
)

# Voxel axes pointing Left, Superior, Posterior with spacings 2, 3, 1.5 mm.
LSP_AFFINE = np.array(
    [
        [-2.0, 0.0, 0.0, 40.0],
        [0.0, 0.0, -1.5, 20.0],
        [0.0, 3.0, 0.0, -30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def _image(data: np.ndarray, affine: np.ndarray = LSP_AFFINE) -> ScalarImage:
    return ScalarImage(
        data=data.astype(np.float32), geometry=Geometry.from_affine(affine, data.shape)
    )


def _sphere(shape: tuple[int, int, int], radius: float) -> np.ndarray:
    grid = np.indices(shape).astype(np.float64)
    centre = (np.array(shape, dtype=np.float64) - 1) / 2
    dist = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(axis=0))
    return dist <= radius


def test_to_canonical_keeps_world_positions_and_round_trips() -> None:
    data = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    image = _image(data)
    canonical = to_canonical(image)
    assert canonical.geometry.axcodes == ("R", "A", "S")
    assert canonical.data.shape == (5, 7, 6)
    assert canonical.geometry.shape == (5, 7, 6)
    assert canonical.geometry.spacing == (2.0, 1.5, 3.0)
    np.testing.assert_allclose(
        np.linalg.norm(canonical.geometry.affine[:3, :3], axis=0), canonical.geometry.spacing
    )
    # Every canonical voxel maps to the same world point as the original voxel with its value.
    inverse = np.linalg.inv(LSP_AFFINE)
    for ijk in [(0, 0, 0), (4, 6, 5), (1, 2, 3), (3, 0, 4)]:
        world = canonical.geometry.affine @ np.array([*ijk, 1.0])
        original_index = np.rint(inverse @ world)[:3].astype(int)
        assert data[tuple(original_index)] == canonical.data[ijk]
    back = from_canonical(canonical.data, image.geometry)
    np.testing.assert_array_equal(back, data)
    # Extra trailing axes (e.g. class probabilities) come back too.
    stacked = np.stack([canonical.data, -canonical.data], axis=-1)
    np.testing.assert_array_equal(from_canonical(stacked, image.geometry)[..., 1], -data)
    assert image.data.shape == (5, 6, 7)  # input untouched


def test_to_canonical_works_for_label_maps() -> None:
    labels = np.zeros((5, 6, 7), dtype=np.uint8)
    labels[1, 2, 3] = 2
    label_map = LabelMap(data=labels, geometry=Geometry.from_affine(LSP_AFFINE, labels.shape))
    canonical = to_canonical(label_map)
    assert isinstance(canonical, LabelMap)
    assert canonical.data.dtype == np.uint8
    np.testing.assert_array_equal(from_canonical(canonical.data, label_map.geometry), labels)


def test_from_canonical_refuses_wrong_shape() -> None:
    image = _image(np.ones((5, 6, 7)))
    with pytest.raises(InputError, match=r"canonical \(RAS\) shape is \(5, 7, 6\)"):
        from_canonical(np.zeros((5, 6, 7)), image.geometry)


def test_slice_volume_and_stack_slices_are_inverse() -> None:
    volume = np.random.default_rng(0).normal(size=(4, 5, 6))
    for name, axis in SLICE_AXES.items():
        slices = slice_volume(volume, name)
        assert slices.shape[0] == volume.shape[axis]
        np.testing.assert_array_equal(stack_slices(slices, name), volume)
    np.testing.assert_array_equal(slice_volume(volume, "axial")[2], volume[:, :, 2])
    assert resolve_slice_axis(1) == 1


@pytest.mark.parametrize(
    ("axis", "message"),
    [("oblique", "unknown slice axis 'oblique'"), (3, "slice axis 3 is not 0, 1 or 2")],
)
def test_bad_slice_axis_is_refused(axis: str | int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        slice_volume(np.zeros((2, 2, 2)), axis)


def test_slice_volume_needs_3d() -> None:
    with pytest.raises(InputError, match=r"needs a 3D array, got shape \(2, 2\)"):
        slice_volume(np.zeros((2, 2)), "axial")


def test_intensity_scaling_maps_range_and_inverts() -> None:
    scaling = IntensityScaling(low=10.0, high=110.0, lower_pct=1.0, upper_pct=99.0)
    x = np.array([-50.0, 10.0, 60.0, 110.0, 500.0])
    y = scaling.apply(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [-1.0, -1.0, 0.0, 1.0, 1.0])
    inside = np.linspace(10.0, 110.0, 11)
    np.testing.assert_allclose(scaling.invert(scaling.apply(inside)), inside, rtol=1e-5)
    assert IntensityScaling.from_dict(scaling.to_dict()) == scaling
    masked = scaling.apply(np.full(3, 60.0), np.array([True, False, True]))
    np.testing.assert_array_equal(masked, [0.0, -1.0, 0.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"low": 5.0, "high": 5.0}, "finite low < high, got low=5.0, high=5.0"),
        ({"low": 0.0, "high": float("nan")}, "finite low < high"),
        ({"low": 0.0, "high": 1.0, "lower_pct": 60.0, "upper_pct": 40.0}, "0 <= lower < upper"),
    ],
)
def test_intensity_scaling_validates(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        IntensityScaling(**kwargs)


def test_intensity_scaling_from_dict_errors() -> None:
    with pytest.raises(ConfigError, match="lacks high"):
        IntensityScaling.from_dict({"low": 0.0, "lower_pct": 1.0, "upper_pct": 99.0})
    with pytest.raises(ConfigError, match="non-numeric"):
        IntensityScaling.from_dict({"low": "a", "high": 1, "lower_pct": 1, "upper_pct": 99})


def test_intensity_scaling_apply_mask_shape() -> None:
    scaling = IntensityScaling(low=0.0, high=1.0)
    with pytest.raises(InputError, match=r"mask shape \(2,\) differs from image shape \(3,\)"):
        scaling.apply(np.zeros(3), np.ones(2, dtype=bool))


def test_fit_scaling_uses_foreground_percentiles() -> None:
    data = np.zeros((10, 10, 10))
    mask = np.zeros_like(data, dtype=bool)
    mask[2:8, 2:8, 2:8] = True
    data[mask] = np.linspace(100.0, 200.0, int(mask.sum()))
    scaling = fit_scaling(data, mask, lower_pct=0.0, upper_pct=100.0)
    assert (scaling.low, scaling.high) == pytest.approx((100.0, 200.0))
    scaled = scaling.apply(data, mask)
    assert scaled[~mask].max() == -1.0
    assert scaled[mask].min() == pytest.approx(-1.0) and scaled[mask].max() == pytest.approx(1.0)
    whole = fit_scaling(data, None, lower_pct=0.0, upper_pct=100.0)
    assert whole.low == 0.0  # without a mask the background sets the low end


def test_fit_scaling_ties_fall_back_to_min_max() -> None:
    data = np.array([1.0] * 99 + [3.0])
    scaling = fit_scaling(data, lower_pct=1.0, upper_pct=90.0)
    assert (scaling.low, scaling.high) == (1.0, 3.0)


def test_fit_scaling_headroom_keeps_hyperintensities_below_the_clip() -> None:
    values = np.arange(101.0)
    plain = fit_scaling(values, lower_pct=0.0, upper_pct=50.0)
    roomy = fit_scaling(values, lower_pct=0.0, upper_pct=50.0, headroom=0.5)
    assert (plain.low, plain.high) == (0.0, 50.0)
    assert (roomy.low, roomy.high, roomy.headroom) == (0.0, 75.0, 0.5)  # 50 + 0.5 * (50 - 0)
    # 60 clips at 1 without headroom; with it, (60 - 0) / 75 * 2 - 1 = 0.6.
    assert plain.apply(np.array([60.0])).tolist() == [1.0]
    np.testing.assert_allclose(roomy.apply(np.array([0.0, 60.0, 75.0, 90.0])), [-1, 0.6, 1, 1])
    np.testing.assert_allclose(roomy.invert(roomy.apply(np.array([60.0]))), [60.0], rtol=1e-6)
    stored = roomy.to_dict()
    assert stored["headroom"] == 0.5 and IntensityScaling.from_dict(stored) == roomy
    old = {"low": 0.0, "high": 50.0, "lower_pct": 0.0, "upper_pct": 50.0}  # before headroom
    assert IntensityScaling.from_dict(old) == plain and plain.headroom == 0.0


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), 10.5])
def test_headroom_out_of_range_is_refused(bad: float) -> None:
    message = r"headroom .* must be between 0 and 10: the fraction of the percentile range"
    with pytest.raises(ConfigError, match=message):
        fit_scaling(np.arange(10.0), headroom=bad)
    with pytest.raises(ConfigError, match=message):
        IntensityScaling(low=0.0, high=1.0, headroom=bad)


def test_fit_scaling_errors() -> None:
    with pytest.raises(InputError, match="foreground mask is empty"):
        fit_scaling(np.ones(4), np.zeros(4, dtype=bool))
    with pytest.raises(InputError, match="every foreground intensity equals 7"):
        fit_scaling(np.full(4, 7.0))
    with pytest.raises(ConfigError, match="percentiles must satisfy"):
        fit_scaling(np.arange(4.0), lower_pct=50.0, upper_pct=10.0)


def test_foreground_mask_finds_noisy_sphere() -> None:
    rng = np.random.default_rng(1)
    shape = (32, 32, 32)
    truth = _sphere(shape, 10.0)
    data = np.abs(rng.normal(0.0, 0.05, size=shape))  # Rician-like background noise
    data[truth] = rng.normal(1.0, 0.1, size=int(truth.sum()))
    hole = _sphere(shape, 3.0)
    data[hole] = 0.02  # a dark "ventricle" inside the head must be filled
    mask = foreground_mask(data)
    assert mask.dtype == bool
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.95
    assert mask[hole].all()
    assert not mask[0, 0, 0] and not mask[:3].any()


def test_foreground_mask_explicit_threshold_and_errors() -> None:
    data = np.zeros((8, 8))
    data[2:6, 2:6] = 5.0
    data[0, 7] = 5.0  # a lone bright pixel is not part of the object
    mask = foreground_mask(data, threshold=1.0)
    assert mask.sum() == 16 and not mask[0, 7]
    with pytest.raises(InputError, match="no voxel is above the foreground threshold 10"):
        foreground_mask(data, threshold=10.0)
    with pytest.raises(InputError, match="needs a 2D or 3D array"):
        foreground_mask(np.zeros(5))


def test_resample_image_and_label_to_spacing() -> None:
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = [10.0, -5.0, 3.0]
    ramp = np.broadcast_to(np.arange(20, dtype=np.float32)[:, None, None], (20, 12, 8)).copy()
    image = _image(ramp, affine)
    out = resample_to_spacing(image, (2.0, 2.0, 2.0))
    assert out.data.shape == (10, 6, 8)
    assert out.geometry.shape == (10, 6, 8)
    assert out.geometry.spacing == (2.0, 2.0, 2.0)
    np.testing.assert_allclose(np.linalg.norm(out.geometry.affine[:3, :3], axis=0), 2.0)
    # New voxel i covers old voxels 2i and 2i+1: linear interpolation gives their mean, and the
    # affine puts its centre halfway between theirs.
    np.testing.assert_allclose(out.data[:, 0, 0], np.arange(10) * 2 + 0.5, atol=1e-5)
    centre = out.geometry.affine @ np.array([3.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(centre[:3], [10.0 + 6.5, -5.0 + 0.5, 3.0])
    cubic = resample_to_spacing(image, (2.0, 2.0, 2.0), order=3)
    assert cubic.data.dtype == np.float32

    labels = np.zeros((20, 12, 8), dtype=np.uint8)
    labels[:, :6] = 1
    labels[:, 6:] = 3
    label_map = LabelMap(data=labels, geometry=Geometry.from_affine(affine, labels.shape))
    resampled = resample_to_spacing(label_map, (1.5, 1.5, 2.0))
    assert isinstance(resampled, LabelMap)
    assert resampled.data.dtype == np.uint8
    assert set(np.unique(resampled.data)) == {1, 3}  # nearest neighbour: no new classes


def test_resample_refuses_bad_options() -> None:
    image = _image(np.ones((4, 4, 4)), np.eye(4))
    labels = LabelMap(np.zeros((4, 4, 4), np.uint8), Geometry.from_affine(np.eye(4), (4, 4, 4)))
    with pytest.raises(ConfigError, match="label maps are resampled with order 0 only"):
        resample_to_spacing(labels, (2.0, 2.0, 2.0), order=1)
    with pytest.raises(ConfigError, match="order must be 0, 1 or 3, got 2"):
        resample_to_spacing(image, (2.0, 2.0, 2.0), order=2)
    with pytest.raises(ConfigError, match=r"spacing \(1.0, 0.0, 1.0\) must be three positive"):
        resample_to_spacing(image, (1.0, 0.0, 1.0))


def test_pad_unpad_and_round_up() -> None:
    assert [round_up(n, 16) for n in (0, 1, 16, 17, 99, 117)] == [0, 16, 16, 32, 112, 128]
    stack = np.arange(2 * 99 * 117, dtype=np.float32).reshape(2, 99, 117)
    padded, pads = pad_to_shape(stack, (112, 128), value=-1.0)
    assert padded.shape == (2, 112, 128)
    assert pads == ((6, 7), (5, 6))
    assert padded[0, 0, 0] == -1.0 and padded[1, -1, -1] == -1.0
    np.testing.assert_array_equal(unpad(padded, pads), stack)
    single, _ = pad_to_shape(np.ones((3, 3), np.uint8), (3, 4))
    assert single.dtype == np.uint8 and single.shape == (3, 4)


def test_pad_and_round_up_errors() -> None:
    with pytest.raises(InputError, match=r"cannot pad slices of shape \(5, 5\) to the smaller"):
        pad_to_shape(np.zeros((5, 5)), (4, 8))
    with pytest.raises(InputError, match="at least 2 axes"):
        pad_to_shape(np.zeros(5), (4, 8))
    with pytest.raises(ConfigError, match="multiple >= 1, got n=3, multiple=0"):
        round_up(3, 0)


def test_nearest_neighbour_resampling_keeps_only_measured_values() -> None:
    # An OCT-like grid: fine in depth (y), resampled to a coarser depth and a finer x.
    rng = np.random.default_rng(0)
    data = rng.gamma(1.0, 100.0, size=(6, 40, 3)).astype(np.float32)  # speckle: no repeats
    image = ScalarImage(data, Geometry.from_affine(np.diag([0.04, 0.001, 0.1, 1.0]), data.shape))
    nearest = resample_to_spacing(image, (0.02, 0.004, 0.1), interpolation="nearest")
    assert nearest.data.shape == (12, 10, 3)
    assert set(np.unique(nearest.data)) <= set(np.unique(data))
    # Each new voxel is the old voxel whose centre is closest: x doubles, y keeps every 4th
    # voxel's neighbour (new centre j sits at old index 4j + 1.5, rounded to 4j + 2).
    np.testing.assert_array_equal(nearest.data[::2, :, 0], data[:, 2::4, 0])
    np.testing.assert_array_equal(nearest.data[1::2, :, 0], data[:, 2::4, 0])
    same = resample_to_spacing(image, (0.02, 0.004, 0.1), order=0)
    np.testing.assert_array_equal(same.data, nearest.data)
    linear = resample_to_spacing(image, (0.02, 0.004, 0.1), interpolation="linear")
    assert not set(np.unique(linear.data)) <= set(np.unique(data))  # linear makes new values


def test_interpolation_option_is_checked() -> None:
    image = _image(np.ones((4, 4, 4)), np.eye(4))
    labels = LabelMap(np.zeros((4, 4, 4), np.uint8), Geometry.from_affine(np.eye(4), (4, 4, 4)))
    with pytest.raises(ConfigError, match="interpolation 'spline' is unknown: use nearest, linear"):
        resample_to_spacing(image, (2.0, 2.0, 2.0), interpolation="spline")
    with pytest.raises(ConfigError, match=r"order=1 contradicts interpolation='nearest' \(order 0"):
        resample_to_spacing(image, (2.0, 2.0, 2.0), order=1, interpolation="nearest")
    with pytest.raises(ConfigError, match="label maps are resampled with order 0 only"):
        resample_to_spacing(labels, (2.0, 2.0, 2.0), interpolation="linear")
    assert resample_to_spacing(labels, (2.0, 2.0, 2.0), interpolation="nearest").data.shape == (
        2, 2, 2,
    )  # fmt: skip
