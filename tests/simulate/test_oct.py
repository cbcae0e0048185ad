"""``simulate_oct``: subjects per vendor, paired held-out renders, determinism, bad options."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segrenorm.cli import simulate_cmd
from segrenorm.errors import ConfigError, InputError
from segrenorm.simulate.benchmark import _derived_seed
from segrenorm.simulate.oct import _EYE, _SCAN, oct_affine, simulate_oct
from segrenorm.simulate.oct_render import render_oct
from segrenorm.simulate.oct_vendors import load_vendor, vendor_names
from segrenorm.simulate.retina import OctGrid, rasterise, sample_retina

SCALE = 0.03  # Cirrus 15 x 31 x 8, Spectralis 8 x 15 x 8: seconds for a whole benchmark


def _simulate(out: Path, **options: object) -> Path:
    kwargs: dict[str, object] = {"subjects_per_vendor": 2, "scale": SCALE, "test_fraction": 0.2,
                                 "val_fraction": 0.2, "seed": 4, "workers": 1}  # fmt: skip
    kwargs.update(options)
    return simulate_oct(out, **kwargs)  # type: ignore[arg-type]


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_same_bytes_for_any_worker_count(tmp_path: Path) -> None:
    one = _simulate(tmp_path / "one").parent
    two = _simulate(tmp_path / "two", workers=2).parent
    files = _tree(one)
    assert files == _tree(two)
    other = _tree(_simulate(tmp_path / "other", seed=5).parent)
    assert other["subjects.csv"] != files["subjects.csv"] or any(
        other[k] != v for k, v in files.items() if k.endswith("_oct.nii.gz")
    )


def test_splits_and_the_stored_scan_is_the_documented_render(tmp_path: Path) -> None:
    root = _simulate(tmp_path / "oct").parent
    meta = json.loads((root / "simulation.json").read_text(encoding="utf-8"))
    # 4 training subjects: N = 4 / 0.6, round(0.2 N) = 1 test and 1 validation subject.
    assert (meta["counts"]["test"], meta["counts"]["val"]) == (1, 1)
    train = meta["splits"]["train"]
    assert set(train) == {"Cirrus", "Spectralis"}
    assert not set(train["Cirrus"]) & set(train["Spectralis"])
    held = meta["splits"]["test"] + meta["splits"]["val"]
    assert not set(held) & (set(train["Cirrus"]) | set(train["Spectralis"]))
    assert meta["source"] == "Cirrus" and meta["target"] == "Spectralis"
    assert meta["vendors"][0]["shape"] == [15, 31, 8]
    subject = meta["splits"]["test"][0]
    index = int(subject.split("-")[1])
    # Rebuild the test subject's Spectralis scan from the documented seeds: same integers.
    eye = sample_retina(np.random.default_rng(_derived_seed(4, _EYE, index)))
    assert meta["pockets"][subject] == json.loads(json.dumps(eye.pockets_summary()))
    vendor = load_vendor("Spectralis").scaled(SCALE)
    volume = rasterise(eye, OctGrid(vendor.shape, vendor.spacing))
    image = render_oct(volume, vendor, np.random.default_rng(_derived_seed(4, _SCAN, index, 1)))
    stored = nib.load(str(root / "images" / "Spectralis" / f"{subject}_oct.nii.gz"))
    np.testing.assert_array_equal(np.asarray(stored.dataobj), image.astype(np.int16))
    np.testing.assert_allclose(stored.affine, oct_affine(vendor), rtol=1e-6)  # float32 header
    clean = _array(root / "images" / "Spectralis-clean" / f"{subject}_oct.nii.gz")
    want = render_oct(volume, vendor.clean(), np.random.default_rng(99)).astype(np.int16)
    np.testing.assert_array_equal(clean, want)
    labels = _array(root / "labels" / "Spectralis" / f"{subject}_fluid.nii.gz")
    np.testing.assert_array_equal(labels, volume.labels)
    retina = _array(root / "labels" / "Spectralis" / f"{subject}_retina.nii.gz")
    np.testing.assert_array_equal(retina, volume.retina_mask().astype(np.uint8))


def test_bad_options_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"give at least two OCT vendors, the source first"):
        simulate_oct(tmp_path / "a", vendors=["Cirrus"])
    with pytest.raises(ConfigError, match=r"vendor name 'Cirrus' is given twice"):
        simulate_oct(tmp_path / "a", vendors=["Cirrus", "Cirrus"])
    with pytest.raises(ConfigError, match=r"scale=1.5 must lie in \(0, 1\]"):
        simulate_oct(tmp_path / "a", scale=1.5)
    with pytest.raises(ConfigError, match=r"subjects_per_vendor=0 must be an integer >= 1"):
        simulate_oct(tmp_path / "a", subjects_per_vendor=0)
    with pytest.raises(ConfigError, match=r"unknown OCT vendor 'Topcon': use one of Cirrus"):
        simulate_oct(tmp_path / "a", vendors=["Topcon", "Spectralis"])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("keep", encoding="utf-8")
    with pytest.raises(InputError, match=r"busy: output folder is not empty; pass overwrite"):
        _simulate(busy)
    assert (busy / "x").read_text(encoding="utf-8") == "keep"  # inputs never overwritten


def test_cli_names_match_the_packaged_vendors() -> None:
    assert simulate_cmd._OCT_NAMES.split(", ") == vendor_names()
