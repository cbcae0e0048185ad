"""Tests of segrenorm.data.prepare: building a slice cache from listings, splits and folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segrenorm.data import prepare as cache
from segrenorm.data.facts import TrainingFacts, inference_facts
from segrenorm.data.listing import SubjectRecord, read_listing
from segrenorm.data.manifest import open_manifest
from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slice_cache import SliceCache
from segrenorm.errors import CacheError, ConfigError, InputError
from segrenorm.training.runlog import describe_cache
from segrenorm.volumes.bias import DEFAULT_BIAS_CORRECTION, NO_BIAS_CORRECTION, BiasCorrection
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.intensity import IntensityScaling, foreground_mask
from segrenorm.volumes.readwrite import load_image, load_label, save_image, save_label
from segrenorm.volumes.retina import retina_mask
from segrenorm.volumes.spatial import slice_volume, unpad
from tests.volumes.test_retina import oct_phantom

SHAPE = (20, 24, 16)
# Voxel axes point Left, Posterior, Superior: prepare must flip x and y to reach RAS.
AFFINE = np.diag([-1.5, -1.5, 2.0, 1.0])


def _ball(radius: float) -> np.ndarray:
    grid = np.indices(SHAPE).astype(np.float64)
    centre = np.array([9.5, 11.5, 7.5])
    return np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(axis=0)) <= radius


def _write_subject(
    folder: Path, name: str, scale: float, seed: int, *, label_name: str | None = None
) -> tuple[Path, Path]:
    """A noisy two-tissue ball and its labels (0 background, 1 shell, 2 core)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[_ball(7.0)] = 1
    labels[_ball(4.0)] = 2
    data = np.abs(rng.normal(0.0, 5.0, SHAPE))
    data[labels == 1] = rng.normal(300.0, 10.0, int((labels == 1).sum()))
    data[labels == 2] = rng.normal(600.0, 10.0, int((labels == 2).sum()))
    geometry = Geometry.from_affine(AFFINE, SHAPE)
    folder.mkdir(parents=True, exist_ok=True)
    image = save_image(data * scale, folder / f"{name}_T1w.nii.gz", geometry=geometry)
    label = save_label(labels, folder / f"{label_name or name + '_dseg'}.nii.gz", geometry=geometry)
    return image, label


def _records(tmp_path: Path, n_per_site: int = 3, labels: bool = True) -> list[SubjectRecord]:
    # Sites too small for the default val and test fractions list their subjects as train.
    split = "train" if n_per_site < 4 else None
    records = []
    for site, scale in (("siteA", 1.0), ("siteB", 2.5)):
        for k in range(n_per_site):
            name = f"sub-{site}{k}"
            image, label = _write_subject(tmp_path / "data" / site, name, scale, k)
            records.append(SubjectRecord(name, site, image, label if labels else None, split))
    return records


def test_prepare_writes_a_valid_cache(tmp_path: Path) -> None:
    records = _records(tmp_path)
    out = prepare_cache(
        records, tmp_path / "cache", seed=3, bias_correction=NO_BIAS_CORRECTION, progress=False
    )
    manifest = open_manifest(out)
    assert manifest["bias_correction"]["method"] == "none"
    assert manifest["sites"] == {"A": "siteA", "B": "siteB"}
    assert manifest["n_classes"] == 3 and manifest["has_labels"] is True
    assert manifest["class_names"] == ["background", "class_1", "class_2"]
    assert manifest["slice_shape"] == [32, 32]  # 20x24 axial slices padded to multiples of 16
    assert manifest["canonical_orientation"] == "RAS"
    assert [s["site"] for s in manifest["subjects"]] == ["A"] * 3 + ["B"] * 3
    images = np.load(out / "A" / "images.npy", mmap_mode="r")
    labels = np.load(out / "A" / "labels.npy")
    masks = np.load(out / "A" / "masks.npy")
    slices = np.load(out / "A" / "slices.npy")
    assert images.dtype == np.float32 and labels.dtype == np.uint8 and slices.dtype == np.int32
    assert images.min() == -1.0 and images.max() <= 1.0
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert set(np.unique(masks)) == {0, 1}
    assert images[masks == 0].max() == -1.0  # background and padding are -1
    assert not list(tmp_path.glob(".cache.*"))  # no temp folder left

    # The first subject's rows are its canonical axial slices, padded; labels exactly as given.
    subject = manifest["subjects"][0]
    rows = slice(subject["first_row"], subject["first_row"] + subject["n_slices"])
    assert (slices[rows, 0] == 0).all()
    original = load_image(records[0].image).data[::-1, ::-1, :]  # LPS -> RAS by flips
    original_labels = load_label(str(records[0].label)).data[::-1, ::-1, :]
    pads = ((6, 6), (4, 4))
    kept = slices[rows, 1]
    np.testing.assert_array_equal(unpad(labels[rows], pads), slice_volume(original_labels, 2)[kept])
    scaling = IntensityScaling.from_dict(subject["scaling"])
    assert subject["scaling"]["lower_pct"] == 0.5 and subject["scaling"]["upper_pct"] == 99.5
    restored = scaling.invert(unpad(np.asarray(images[rows]), pads))
    expected = slice_volume(original, 2)[kept]
    inside = (unpad(masks[rows], pads) == 1) & (expected > scaling.low) & (expected < scaling.high)
    np.testing.assert_allclose(restored[inside], expected[inside], rtol=1e-4, atol=1e-3)


def _biased_records(tmp_path: Path) -> list[SubjectRecord]:
    """One subject per site, each under a smooth field along x (0.7 to 1.4)."""
    field = np.exp(np.linspace(-0.35, 0.35, SHAPE[0]))[:, None, None]
    records = []
    for record in _records(tmp_path, n_per_site=1):
        image = load_image(record.image)
        path = save_image(image.data * field, tmp_path / f"biased-{record.site}.nii.gz",
                          geometry=image.geometry)  # fmt: skip
        records.append(SubjectRecord(record.subject, record.site, path, record.label, "train"))
    return records


def test_prepare_corrects_the_bias_field_and_records_how(tmp_path: Path) -> None:
    records = _biased_records(tmp_path)
    out = prepare_cache(records, tmp_path / "n4", min_foreground=0.0, progress=False)
    manifest = open_manifest(out)
    assert manifest["bias_correction"] == DEFAULT_BIAS_CORRECTION.to_dict()  # on by default
    plain = prepare_cache(
        records, tmp_path / "none", min_foreground=0.0, bias_correction=NO_BIAS_CORRECTION,
        progress=False,
    )  # fmt: skip
    images = np.load(out / "A" / "images.npy")
    masks = np.load(out / "A" / "masks.npy") == 1
    differs = np.abs(images - np.load(plain / "A" / "images.npy"))[masks]
    assert differs.mean() > 0.02
    # The cached rows are the N4-corrected canonical volume (LPS -> RAS by flips), scaled.
    canonical = load_image(records[0].image).data[::-1, ::-1, :]
    mask = foreground_mask(canonical)
    corrected = DEFAULT_BIAS_CORRECTION.apply(canonical, (1.5, 1.5, 2.0), mask)
    scaling = IntensityScaling.from_dict(manifest["subjects"][0]["scaling"])
    pads = ((6, 6), (4, 4))
    restored = scaling.invert(unpad(images, pads))
    expected = slice_volume(corrected, 2)
    inside = unpad(masks, pads) & (expected > scaling.low) & (expected < scaling.high)
    np.testing.assert_allclose(restored[inside], expected[inside], rtol=1e-4, atol=1e-2)
    # The shell (label 1) is flat again: its spread drops with the field.
    shell = slice_volume(load_label(str(records[0].label)).data[::-1, ::-1, :], 2) == 1
    flat, biased = np.load(plain / "A" / "images.npy"), images
    assert unpad(biased, pads)[shell].std() < 0.5 * unpad(flat, pads)[shell].std()
    # Checkpoints trained on the cache carry the setting (describe_cache -> inference facts).
    facts = describe_cache(SliceCache.open(out))["inference"]
    assert facts["bias_correction"] == DEFAULT_BIAS_CORRECTION.to_dict()
    custom = BiasCorrection(shrink=2, iterations=(10,))
    again = prepare_cache(records, tmp_path / "s2", bias_correction=custom, progress=False)
    assert BiasCorrection.from_dict(open_manifest(again)["bias_correction"]) == custom


def test_an_old_manifest_without_bias_correction_means_none(tmp_path: Path) -> None:
    out = prepare_cache(_records(tmp_path, n_per_site=1), tmp_path / "cache", progress=False)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["bias_correction"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    old = open_manifest(out)
    assert inference_facts(old)["bias_correction"] == NO_BIAS_CORRECTION.to_dict()


def _lesion_records(tmp_path: Path) -> list[SubjectRecord]:
    """Two subjects per site: a tissue ball with a small hyperintense blob (about 0.8 %)."""
    records = []
    for site, scale in (("siteA", 1.0), ("siteB", 2.0)):
        for k in range(2):
            rng = np.random.default_rng(10 + k)
            labels = np.zeros(SHAPE, dtype=np.uint8)
            labels[_ball(7.0)] = 2
            labels[8:10, 10:12, 6:9] = 1  # the "lesion": 12 voxels in the ball
            data = np.abs(rng.normal(0.0, 5.0, SHAPE))
            data[labels == 2] = rng.normal(300.0, 5.0, int((labels == 2).sum()))
            data[labels == 1] = rng.normal(322.0, 1.0, 12)
            geometry = Geometry.from_affine(AFFINE, SHAPE)
            folder = tmp_path / "data" / site
            folder.mkdir(parents=True, exist_ok=True)
            name = f"sub-{site}{k}"
            image = save_image(data * scale, folder / f"{name}_FLAIR.nii.gz", geometry=geometry)
            label = save_label(labels, folder / f"{name}_dseg.nii.gz", geometry=geometry)
            records.append(SubjectRecord(name, site, image, label, "train"))
    return records


def test_headroom_keeps_a_hyperintense_class_off_the_clip_and_prepare_warns_without_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    records = _lesion_records(tmp_path)
    options = {"bias_correction": NO_BIAS_CORRECTION, "upper_pct": 99.0, "progress": False}
    with caplog.at_level("WARNING", logger="segrenorm.data.prepare"):
        plain = prepare_cache(records, tmp_path / "plain", **options)
    warned = [r.getMessage() for r in caplog.records if "clip at +1" in r.getMessage()]
    assert len(warned) == 2  # one per site
    assert warned[0].startswith("site 'siteA': 100% of its 'class_1' voxels (24 of 24) clip at")
    assert "(the 99th percentile)" in warned[0] and "--headroom (1)" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="segrenorm.data.prepare"):
        roomy = prepare_cache(records, tmp_path / "roomy", headroom=1.0, **options)
    assert not [r for r in caplog.records if "clip at +1" in r.getMessage()]

    for out, headroom in ((plain, 0.0), (roomy, 1.0)):
        manifest = open_manifest(out)
        assert manifest["headroom"] == headroom
        assert inference_facts(manifest)["headroom"] == headroom
        assert all(s["scaling"]["headroom"] == headroom for s in manifest["subjects"])
    pairs = zip(open_manifest(plain)["subjects"], open_manifest(roomy)["subjects"], strict=True)
    for a, b in pairs:  # same low, twice the range above it
        assert b["scaling"]["low"] == a["scaling"]["low"]
        span = a["scaling"]["high"] - a["scaling"]["low"]
        assert b["scaling"]["high"] - b["scaling"]["low"] == pytest.approx(2 * span)
    images, labels = np.load(roomy / "A" / "images.npy"), np.load(roomy / "A" / "labels.npy")
    lesion, tissue = images[labels == 1], images[labels == 2]
    assert lesion.max() < 1.0 and lesion.min() > np.percentile(tissue, 99)
    assert (np.load(plain / "A" / "images.npy")[labels == 1] == 1.0).all()


def test_slices_with_little_foreground_are_skipped(tmp_path: Path) -> None:
    records = _records(tmp_path, n_per_site=1)
    out = prepare_cache(records, tmp_path / "cache", min_foreground=0.2, progress=False)
    manifest = open_manifest(out)
    kept = np.load(out / "A" / "slices.npy")[:, 1]
    mask = foreground_mask(load_image(records[0].image).data)
    fraction = mask.reshape(-1, SHAPE[2]).mean(axis=0)  # per axial slice (z unchanged by flips)
    np.testing.assert_array_equal(kept, np.flatnonzero(fraction >= 0.2))
    assert 0 < len(kept) < SHAPE[2]
    assert manifest["subjects"][0]["n_slices"] == len(kept)
    everything = prepare_cache(records, tmp_path / "all", min_foreground=0.0, progress=False)
    assert open_manifest(everything)["subjects"][0]["n_slices"] == SHAPE[2]


def test_split_is_subject_level_and_seeded(tmp_path: Path) -> None:
    records = _records(tmp_path, n_per_site=5, labels=False)

    def splits(seed: int, name: str) -> dict[tuple[str, str], tuple[str, int]]:
        out = prepare_cache(records, tmp_path / name, seed=seed, n_folds=2, progress=False)
        manifest = open_manifest(out)
        return {(s["site"], s["subject"]): (s["split"], s["fold"]) for s in manifest["subjects"]}

    first, again = splits(0, "c0"), splits(0, "c0b")
    assert first == again
    for site in ("A", "B"):
        tests = [k for k, (split, _) in first.items() if k[0] == site and split == "test"]
        assert len(tests) == 2  # round(0.3 * 5)
        assert {fold for k, (_, fold) in first.items() if k[0] == site} == {0, 1}
    assert any(splits(seed, f"s{seed}") != first for seed in range(1, 4))
    # Rows of one subject all point at that subject: the split cannot leak slices.
    manifest = open_manifest(tmp_path / "c0")
    table = np.load(tmp_path / "c0" / "B" / "slices.npy")
    for index, subject in enumerate(manifest["subjects"]):
        if subject["site"] == "B":
            rows = table[subject["first_row"] : subject["first_row"] + subject["n_slices"]]
            assert (rows[:, 0] == index).all()
    # Listing order does not change the draw.
    shuffled = prepare_cache(
        records[::-1], tmp_path / "rev", sites=("siteA", "siteB"), n_folds=2, progress=False
    )
    subjects = open_manifest(shuffled)["subjects"]
    assert {(s["site"], s["subject"]): (s["split"], s["fold"]) for s in subjects} == first


def test_csv_listing_and_split_column(tmp_path: Path) -> None:
    records = _records(tmp_path, n_per_site=2)
    lines = ["subject,site,image,label,split"]
    for k, record in enumerate(records):
        split = "test" if k in (0, 2) else ""
        image = record.image.relative_to(tmp_path)  # relative to the CSV's folder
        lines.append(f"{record.subject},{record.site},{image},{record.label},{split}")
    listing = tmp_path / "subjects.csv"
    listing.write_text("\n".join(lines) + "\n")
    read = read_listing(listing)
    assert [r.split for r in read] == ["test", None, "test", None]
    assert read[0].image == records[0].image.resolve()
    out = prepare_cache(read, tmp_path / "cache", test_fraction=0.0, val_fraction=0.0,
                        progress=False)  # fmt: skip
    manifest = open_manifest(out)
    assert [s["split"] for s in manifest["subjects"]] == ["test", "train", "test", "train"]


def test_prepare_refuses_bad_records_and_options(tmp_path: Path) -> None:
    records = _records(tmp_path, n_per_site=1)
    out = tmp_path / "cache"
    with pytest.raises(
        InputError, match=r"at least two sites, the subjects are all at \['siteA'\]"
    ):
        prepare_cache(records[:1], out, progress=False)
    with pytest.raises(InputError, match=r"no subject at \['siteX'\]"):
        prepare_cache(records, out, sites=("siteA", "siteX"), progress=False)
    mixed = [records[0], SubjectRecord("sub-0", "siteB", records[1].image, None)]
    with pytest.raises(InputError, match=r"site\(s\) 'siteB' have no label maps while 'siteA'"):
        prepare_cache(mixed, out, progress=False)
    twice = [records[0], records[0], records[1]]
    with pytest.raises(InputError, match=r"site 'siteA' lists subject\(s\) \['sub-siteA0'\] more"):
        prepare_cache(twice, out, progress=False)
    with pytest.raises(ConfigError, match="unknown slice axis 'oblique'"):
        prepare_cache(records, out, slice_axis="oblique", progress=False)
    with pytest.raises(ConfigError, match=r"test_fraction 1.0 must be in"):
        prepare_cache(records, out, test_fraction=1.0, progress=False)
    with pytest.raises(ConfigError, match=r"2 class names \['bg', 'fg'\] given for 3 classes"):
        prepare_cache(records, out, n_classes=3, class_names=["bg", "fg"], progress=False)
    with pytest.raises(InputError, match=r"label values 2 fall outside the classes 0\.\.1"):
        prepare_cache(records, out, class_names=["bg", "fg"], progress=False)
    with pytest.raises(InputError, match="label values 2 fall outside"):
        prepare_cache(records, out, n_classes=2, progress=False)
    with pytest.raises(InputError, match="no slice has 95% foreground"):
        prepare_cache(records, out, min_foreground=0.95, progress=False)
    with pytest.raises(InputError, match="split 'dev'"):
        SubjectRecord("s", "A", records[0].image, None, split="dev")
    assert not out.exists() and not list(tmp_path.glob(".cache.*"))


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"spacing": (1.0, -1.0, 1.0)}, r"spacing \(1.0, -1.0, 1.0\) must be three positive"),
        ({"lower_pct": 99.0, "upper_pct": 1.0}, "percentiles 99.0, 1.0 must be 0 <= lower"),
        ({"min_foreground": 1.0}, r"min_foreground 1.0 must be in \[0, 1\)"),
        ({"pad_multiple": 0}, "pad_multiple 0 must be >= 1"),
        ({"n_folds": 0}, "n_folds 0 must be >= 1"),
        ({"n_classes": 300}, r"n_classes 300 must be in 1..256 \(labels are stored as uint8\)"),
    ],
)
def test_prepare_refuses_bad_options(
    tmp_path: Path, option: dict[str, object], message: str
) -> None:
    image = tmp_path / "img.nii.gz"  # options are checked before any volume is read
    records = [SubjectRecord("s", "A", image, None), SubjectRecord("s", "B", image, None)]
    with pytest.raises(ConfigError, match=message):
        prepare_cache(records, tmp_path / "cache", progress=False, **option)  # type: ignore[arg-type]


def test_prepare_refuses_bad_outputs_and_wide_labels(tmp_path: Path) -> None:
    records = _records(tmp_path, n_per_site=1)
    with pytest.raises(InputError, match=r"the folder .*missing for cache c does not exist"):
        prepare_cache(records, tmp_path / "missing" / "c", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CacheError, match="file exists and is not a slice cache"):
        prepare_cache(records, tmp_path / "file", overwrite=True, progress=False)
    wide = np.zeros(SHAPE, dtype=np.int16)
    wide[5:10, 5:10, 5:10] = 300
    label = save_label(wide, tmp_path / "wide.nii.gz", geometry=Geometry.from_affine(AFFINE, SHAPE))
    records[1] = SubjectRecord("w", "siteB", records[1].image, label, "train")
    with pytest.raises(InputError, match=r"wide.nii.gz: label value 300 does not fit the cache"):
        prepare_cache(records, tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists() and not list(tmp_path.glob(".cache.*"))


def test_prepare_resamples_to_spacing(tmp_path: Path) -> None:
    records = _records(tmp_path, n_per_site=1)
    out = prepare_cache(records, tmp_path / "cache", spacing=(3.0, 3.0, 4.0), progress=False)
    manifest = open_manifest(out)
    assert manifest["spacing"] == [3.0, 3.0, 4.0]
    assert manifest["subjects"][0]["shape"] == [10, 12, 8]
    assert manifest["subjects"][0]["spacing"] == [3.0, 3.0, 4.0]
    assert manifest["slice_shape"] == [16, 16]
    assert set(np.unique(np.load(out / "B" / "labels.npy"))) == {0, 1, 2}


def test_existing_output_needs_overwrite(tmp_path: Path) -> None:
    records = _records(tmp_path, n_per_site=1, labels=False)
    out = prepare_cache(records, tmp_path / "cache", progress=False)
    assert open_manifest(out)["n_classes"] == 1
    assert open_manifest(out)["class_names"] == ["background"]
    with pytest.raises(CacheError, match="already exists; pass overwrite"):
        prepare_cache(records, out, progress=False)
    prepare_cache(records, out, overwrite=True, slice_axis="coronal", progress=False)
    assert open_manifest(out)["slice_axis"] == "coronal"
    assert open_manifest(out)["slice_shape"] == [32, 16]
    data = tmp_path / "data"  # a folder of volumes, not a cache: never deleted
    with pytest.raises(CacheError, match=r"is not a slice cache .*refusing to replace"):
        prepare_cache(records, data, overwrite=True, progress=False)
    assert any(data.iterdir())


def test_interrupted_prepare_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = _records(tmp_path, n_per_site=2)
    out = prepare_cache(records, tmp_path / "cache", progress=False)
    before = (out / "manifest.json").read_text()
    calls = {"n": 0}
    original = cache._assemble

    def failing(*args: object, **kwargs: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # site A written, site B half-way
            raise RuntimeError("disk full")
        original(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(cache, "_assemble", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_cache(records, tmp_path / "fresh", progress=False)
    assert not (tmp_path / "fresh").exists()
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_cache(records, out, overwrite=True, slice_axis="sagittal", progress=False)
    assert (out / "manifest.json").read_text() == before  # the old cache is untouched
    open_manifest(out)
    assert not list(tmp_path.glob(".fresh.*")) and not list(tmp_path.glob(".cache.*"))


# --------------------------------------------------------------------------- OCT


def write_oct_study(
    root: Path, suffix: str = ".nii.gz", splits: tuple[str, ...] = ("train", "train")
) -> list[SubjectRecord]:
    """Two vendors' OCT volumes of the phantom retina with fluid labels (1 cyst, 3 PED):
    ``fine`` at 0.002 mm in depth, ``coarse`` (the target: the grid) at 0.004 mm; subject
    ``k`` of each site is in ``splits[k]``."""
    records = []
    for site, depth in (("fine", 2), ("coarse", 1)):
        for k, split in enumerate(splits):
            phantom = oct_phantom(10 * depth + k, (24, 48, 3), depth=depth)
            geometry = Geometry.from_affine(np.diag([0.02, 0.004 / depth, 0.1, 1.0]),
                                            phantom.data.shape)  # fmt: skip
            labels = phantom.cyst.astype(np.uint8) + 3 * phantom.ped.astype(np.uint8)
            image = save_image(phantom.data, root / site / f"s{k}_oct{suffix}", geometry=geometry)
            label = save_label(labels, root / site / f"s{k}_fluid{suffix}", geometry=geometry)
            records.append(SubjectRecord(f"{site}{k}", site, image, label, split))
    return records


def test_prepare_oct_keeps_measured_values_the_retina_and_the_background(tmp_path: Path) -> None:
    records = write_oct_study(tmp_path)
    out = prepare_cache(
        records, tmp_path / "cache", modality="oct", n_classes=4, min_foreground=0.0,
        lower_pct=1.0, upper_pct=99.0, progress=False,
    )  # fmt: skip
    manifest = open_manifest(out)
    assert manifest["modality"] == "oct"
    assert manifest["bias_correction"] == NO_BIAS_CORRECTION.to_dict()  # the OCT default
    assert manifest["spacing"] == pytest.approx([0.02, 0.004, 0.1])  # the target's grid
    images, masks = np.load(out / "A" / "images.npy"), np.load(out / "A" / "masks.npy")
    # The fine vendor's first subject, by hand: nearest neighbour onto the grid, the retina
    # as the mask, its percentiles to -1/1 applied to every voxel, B-scans along z.
    volume = load_image(records[0].image).data[:, 1::2]  # depth 0.002 -> 0.004: every 2nd voxel
    mask = retina_mask(volume)
    low, high = np.percentile(volume[mask], [1.0, 99.0])
    expected = np.clip((volume.astype(np.float64) - low) * 2 / (high - low) - 1, -1, 1)
    assert manifest["subjects"][0]["scaling"]["low"] == pytest.approx(low)
    rows = unpad(images[:3], ((4, 4), (0, 0)))  # 24 x 48 B-scans padded to 32 x 48
    np.testing.assert_allclose(rows, slice_volume(expected, "axial"), atol=1e-5)
    np.testing.assert_array_equal(unpad(masks[:3], ((4, 4), (0, 0))), slice_volume(mask, "axial"))
    background = rows[unpad(masks[:3], ((4, 4), (0, 0))) == 0]
    assert (background > -1.0).mean() > 0.5  # kept, not set to -1
    labels = np.load(out / "A" / "labels.npy")
    assert set(np.unique(labels)) == {0, 1, 3}

    facts = inference_facts(manifest)
    assert facts["modality"] == "oct"
    assert TrainingFacts.from_dict(facts).modality == "oct"
    assert TrainingFacts.from_dict({k: v for k, v in facts.items() if k != "modality"}).modality \
        == "mri"  # fmt: skip
    with pytest.raises(CacheError, match=r"malformed inference facts \(ConfigError: modality 'x"):
        TrainingFacts.from_dict({**facts, "modality": "x"})
    with pytest.raises(ConfigError, match="OCT takes --bias-correction none"):
        prepare_cache(records, tmp_path / "n4", modality="oct",
                      bias_correction=DEFAULT_BIAS_CORRECTION, progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match="modality 'ct' is unknown"):
        prepare_cache(records, tmp_path / "ct", modality="ct", progress=False)
