"""MS-like lesions: counts, volumes, placement classes, shapes, partial volume, determinism."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from segrenorm.errors import ConfigError
from segrenorm.simulate.anatomy import Anatomy, load_mni152_anatomy, tissue_labels, warp_anatomy
from segrenorm.simulate.lesion_shapes import LesionShape, occupancy
from segrenorm.simulate.lesions import (
    LESION_CLASSES,
    Lesions,
    LesionSettings,
    add_lesions,
    draw_lesion_count,
    placement_candidates,
    ventricle_mask,
)

# Many lesions, a third of them confluent: every rule is exercised on one subject.
BUSY = LesionSettings(mean_count=60.0, count_shape=50.0, confluent_fraction=0.3)


@pytest.fixture(scope="module")
def subject() -> Anatomy:
    return warp_anatomy(load_mni152_anatomy(2), 11)


@pytest.fixture(scope="module")
def busy(subject: Anatomy) -> Lesions:
    return add_lesions(subject, np.random.default_rng(4), BUSY)


def _points_mm(mask: np.ndarray, zooms: tuple[float, float, float]) -> np.ndarray:
    return np.argwhere(mask) * np.array(zooms)


# --- counts and volumes ----------------------------------------------------------------------


def test_counts_are_skewed_clipped_and_sometimes_zero() -> None:
    rng = np.random.default_rng(0)
    counts = np.array([draw_lesion_count(rng, LesionSettings()) for _ in range(2000)])
    assert counts.min() == 0 and counts.max() == 30
    assert 0.03 < (counts == 0).mean() < 0.15  # gamma-Poisson: (1 / (1 + 10 / 1.2)) ** 1.2
    assert 0.03 < (counts == 30).mean() < 0.15  # the clipped tail
    assert np.median(counts) < counts.mean()  # skewed toward few lesions


def test_busy_subject_keeps_the_limits(subject: Anatomy, busy: Lesions) -> None:
    records = busy.records
    assert busy.requested == 30 and len(records) == 30
    volumes = np.array([r.volume_mm3 for r in records])
    assert volumes.min() >= 3.0 and volumes.max() <= 1500.0
    assert np.median(volumes) < 100.0  # most lesions are small
    assert {r.lesion_class for r in records} == set(LESION_CLASSES)
    assert {r.shape for r in records} == {"ellipsoid", "irregular", "blobs"}
    assert any(r.confluent for r in records) and not all(r.confluent for r in records)
    assert all(r.parts in (2, 3) for r in records if r.confluent)


def test_each_lesion_is_one_component_of_the_mask(busy: Lesions) -> None:
    mask = busy.mask.astype(bool)
    assert set(np.unique(busy.mask)) == {0, 1}
    assert np.array_equal(mask, busy.index > 0)
    for connectivity in (1, 3):  # 6- and 26-connected components alike
        structure = ndimage.generate_binary_structure(3, connectivity)
        assert ndimage.label(mask, structure=structure)[1] == len(busy.records)
    faces = ndimage.generate_binary_structure(3, 1)
    for k, record in enumerate(busy.records, start=1):
        own = busy.index == k
        assert ndimage.label(own, structure=faces)[1] == 1
        assert int(own.sum()) == record.mask_voxels


def test_volumes_are_the_partial_volume_sums(subject: Anatomy, busy: Lesions) -> None:
    # Lesion supports never touch (26-connectivity), so each component is one lesion.
    parts, n = ndimage.label(busy.probability > 0, structure=np.ones((3, 3, 3)))
    assert n == len(busy.records)
    voxel = math.prod(subject.zooms)
    sums = ndimage.sum(busy.probability.astype(np.float64), parts, range(1, n + 1)) * voxel
    wanted = sorted(r.volume_mm3 for r in busy.records)
    np.testing.assert_allclose(sorted(sums), wanted, rtol=1e-5)
    summary = busy.summary()
    assert summary["count"] == 30 and sum(summary["classes"].values()) == 30
    assert summary["total_volume_mm3"] == pytest.approx(sum(wanted), abs=0.5)


# --- white matter and placement ---------------------------------------------------------------


def test_lesions_lie_inside_white_matter(subject: Anatomy, busy: Lesions) -> None:
    assert np.all(busy.probability <= subject.wm + 1e-6)
    assert np.all(busy.probability >= 0)
    mask = busy.mask.astype(bool)
    assert subject.wm[mask].min() >= 0.5
    assert np.mean(tissue_labels(subject)[mask] == 3) > 0.99


def test_ventricles_are_deep_csf(subject: Anatomy) -> None:
    ventricles = ventricle_mask(subject)
    assert 500 < ventricles.sum() < 10000  # two lateral ventricles, 2 mm voxels
    assert subject.csf[ventricles].min() >= 0.5
    outside = (subject.csf + subject.gm + subject.wm) < 0.5
    depth = cKDTree(_points_mm(outside, subject.zooms)).query(
        _points_mm(ventricles, subject.zooms)
    )[0]
    assert depth.min() >= 15.0 - 1e-6


def test_placement_classes_follow_the_distance_rules(subject: Anatomy, busy: Lesions) -> None:
    zooms = subject.zooms
    to_ventricles = cKDTree(_points_mm(ventricle_mask(subject), zooms))
    to_gm = cKDTree(_points_mm(subject.gm >= 0.5, zooms))
    for record in busy.records:
        voxel = np.rint(record.centre).astype(int)
        assert subject.wm[tuple(voxel)] >= 0.7
        point = voxel * np.array(zooms)
        d_vent, d_gm = to_ventricles.query(point)[0], to_gm.query(point)[0]
        if record.lesion_class == "periventricular":
            assert d_vent <= 5.0 + 1e-6
        elif record.lesion_class == "juxtacortical":
            assert d_gm <= 3.0 + 1e-6 and d_vent > 10.0
        else:
            assert d_gm >= 6.0 - 1e-6 and d_vent >= 6.0 - 1e-6
    candidates = placement_candidates(subject)
    assert all(len(candidates[c]) > 100 for c in LESION_CLASSES)


def test_determinism_same_seed_same_lesions(subject: Anatomy) -> None:
    a = add_lesions(subject, np.random.default_rng(9))
    b = add_lesions(subject, np.random.default_rng(9))
    assert a.records == b.records
    assert np.array_equal(a.probability, b.probability) and np.array_equal(a.mask, b.mask)
    c = add_lesions(subject, np.random.default_rng(10))
    assert c.records != a.records


# --- shapes and partial volume ---------------------------------------------------------------


def _sphere() -> LesionShape:
    eye = np.eye(3)[None]
    return LesionShape(
        "ellipsoid", np.zeros((1, 3)), np.ones((1, 3)), eye, 0.0, np.eye(3), np.ones((3, 3))
    )


@pytest.mark.parametrize(("radius", "zoom"), [(3.0, 2.0), (5.0, 1.0), (1.0, 2.0)])
def test_occupancy_of_a_sphere_matches_its_volume(radius: float, zoom: float) -> None:
    sphere = _sphere()
    assert sphere.unit_volume() == pytest.approx(4 / 3 * math.pi, rel=0.03)
    centre = np.array([20.3, 21.1, 19.7])
    found = occupancy([(sphere, centre, radius)], (30, 30, 30), (zoom,) * 3, 0.5)
    assert found is not None
    box, fraction = found
    assert fraction.max() <= 1.0
    volume = float(fraction.sum()) * zoom**3
    assert volume == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.08)
    # The box holds the sphere: it starts at most one voxel before its edge.
    assert box[0].start <= (centre[0] - radius) / zoom


def test_sub_voxel_lesions_render_through_partial_volume() -> None:
    # A uniform white-matter slab: every voxel can hold a lesion centre.
    shape = (24, 24, 24)
    wm = np.zeros(shape, dtype=np.float32)
    wm[4:20, 4:20, 4:20] = 1.0
    gm = np.zeros(shape, dtype=np.float32)
    gm[wm == 0] = 1.0
    gm[:2], gm[-2:] = 0.0, 0.0
    anatomy = Anatomy.from_template(gm + 2 * wm, gm, wm, gm + wm, np.diag([2.0, 2.0, 2.0, 1.0]))
    tiny = LesionSettings(
        mean_count=8.0, count_shape=100.0, min_volume_mm3=3.0, max_volume_mm3=4.0,
        confluent_fraction=0.0, class_weights=(0.0, 0.5, 0.5),
    )  # fmt: skip
    lesions = add_lesions(anatomy, np.random.default_rng(1), tiny)
    assert len(lesions.records) >= 4
    assert lesions.probability.max() < 0.5  # 4 mm^3 can fill at most half an 8 mm^3 voxel
    assert all(r.mask_voxels == 1 for r in lesions.records)  # its most probable voxel
    assert all(3.0 <= r.volume_mm3 <= 4.0 for r in lesions.records)
    assert int(lesions.mask.sum()) == len(lesions.records)


def test_no_white_matter_no_lesions(tiny_kit: SimpleNamespace) -> None:
    phantom = tiny_kit.anatomy()
    empty = Anatomy(
        phantom.csf, phantom.gm, np.zeros_like(phantom.wm), phantom.texture, phantom.affine
    )
    lesions = add_lesions(empty, np.random.default_rng(0), BUSY)
    assert lesions.requested > 0 and lesions.records == ()
    assert not lesions.mask.any() and not lesions.probability.any()
    assert not ventricle_mask(empty).any()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_count": -1}, r"max_count=-1 must lie in \[0, 1000\]"),
        ({"min_volume_mm3": 20.0, "max_volume_mm3": 10.0}, r"must satisfy 0 < min_volume_mm3"),
        ({"class_weights": (0.5, 0.5, 0.5)}, r"class_weights=\(0.5, 0.5, 0.5\) must be three"),
        ({"mean_count": 0.0}, r"mean_count=0.0 must be positive"),
        ({"confluent_fraction": 1.5}, r"confluent_fraction=1.5 must lie in \[0, 1\]"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LesionSettings(**kwargs)  # type: ignore[arg-type]
