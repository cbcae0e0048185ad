"""The second scanner pair (packaged profile files) and the clean target renders."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import shutil
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest

from segrenorm.cli import simulate_cmd
from segrenorm.errors import ConfigError
from segrenorm.simulate.anatomy import Anatomy, load_mni152_anatomy, tissue_labels, warp_anatomy
from segrenorm.simulate.benchmark import _ANATOMY, _derived_seed
from segrenorm.simulate.preview import preview_subject
from segrenorm.simulate.scanners import (
    SCANNERS,
    ScannerProfile,
    apply_scanner,
    load_scanner,
    scanner_names,
)
from segrenorm.simulate.subjects import read_subjects

PROFILES = resources.files("segrenorm.simulate").joinpath("profiles")


def _nifti(path: Path) -> nib.Nifti1Image:
    image = nib.load(str(path))
    assert isinstance(image, nib.Nifti1Image)
    return image


def _render(anatomy: Anatomy, scanner: ScannerProfile, seed: int = 0) -> np.ndarray:
    return apply_scanner(
        anatomy.csf, anatomy.gm, anatomy.wm, anatomy.texture, scanner, anatomy.zooms,
        np.random.default_rng(seed),
    )  # fmt: skip


@pytest.fixture(scope="module")
def second_pair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The second pair simulated through the command line, as a user would."""
    out = tmp_path_factory.mktemp("pair2") / "t1"
    parser = argparse.ArgumentParser(prog="segrenorm")
    simulate_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(
        ["simulate", "t1", "--out", str(out), "--subjects", "4", "--test-fraction", "0.5",
         "--val-fraction", "0",
         "--source", "1T", "--target", "7T", "--seed", "3"]
    )  # fmt: skip
    assert args.func(args) == 0
    return out


# --- the second pair ---------------------------------------------------------------------------


def test_packaged_profiles_load_by_name_and_by_path() -> None:
    assert scanner_names() == ["1.5T", "1T", "3T", "7T", "PI", "SA", "SV"]
    for name in ("1T", "7T"):
        by_name = load_scanner(name)
        with resources.as_file(PROFILES.joinpath(f"{name}.yaml")) as path:
            assert load_scanner(path) == by_name
        assert by_name.name == name  # the file's name field matches its stem
        assert ScannerProfile.from_dict(by_name.to_dict()) == by_name


def test_the_second_pair_differs_from_the_first_in_contrast_noise_and_blur() -> None:
    first = (SCANNERS["1.5T"], SCANNERS["3T"])
    second = (load_scanner("1T"), load_scanner("7T"))
    for old, new in zip(first, second, strict=True):
        # Contrast: other tissue ratios and another gamma.
        assert (new.csf / new.wm, new.gm / new.wm) != (old.csf / old.wm, old.gm / old.wm)
        assert new.gamma != old.gamma
        # Noise and blur / resolution profile.
        assert new.noise != old.noise
        assert (new.fwhm_inplane_mm, new.fwhm_through_mm, new.slice_axis) != (
            old.fwhm_inplane_mm, old.fwhm_through_mm, old.slice_axis,
        )  # fmt: skip
    source, target = second
    assert source.gamma > 1.0 > first[0].gamma  # expands contrast where 1.5T compresses it
    assert source.slice_axis == 0 != first[0].slice_axis  # thick sagittal slabs
    assert source.noise > first[0].noise and target.noise > first[1].noise
    assert target.fwhm_inplane_mm == target.fwhm_through_mm == 0.0  # sharper than 3T
    # The target keeps more grey/white contrast than its source, as a harmonization target.
    assert target.gm / target.wm < source.gm / source.wm


def test_the_second_pair_renders_with_its_noise_and_blur(tiny_kit: SimpleNamespace) -> None:
    phantom = tiny_kit.anatomy()
    labels = tissue_labels(phantom)
    for name in ("1T", "7T"):
        scanner = load_scanner(name)
        image = _render(phantom, scanner)
        # Zero signal: Rician noise is Rayleigh there, with mean sigma * sqrt(pi / 2).
        sigma = scanner.noise * scanner.wm * scanner.scale
        background = image[phantom.support == 0]
        assert background.mean() / np.sqrt(np.pi / 2) == pytest.approx(sigma, rel=0.05), name
        clean = _render(phantom, scanner.clean())
        assert np.median(clean[labels == 3]) == pytest.approx(scanner.scale, rel=0.02), name
    # 1T blurs most along x (its slice axis): the WM/GM edge is softest there.
    clean = _render(phantom, load_scanner("1T").clean())
    steps = [float(np.abs(np.diff(clean, axis=a)).max()) for a in range(3)]
    assert steps[0] < 0.8 * min(steps[1], steps[2])


def test_simulate_help_lists_every_named_scanner() -> None:
    names = [*simulate_cmd._NAMES.split(", "), *simulate_cmd._FLAIR_NAMES.split(", ")]
    assert sorted(names) == scanner_names()


def test_a_bad_packaged_name_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"unknown scanner '5T': use one of 1.5T, 1T, 3T, 7T"):
        load_scanner("5T")


# --- clean target renders ------------------------------------------------------------------


def test_the_second_pair_simulates_with_clean_targets(second_pair: Path) -> None:
    meta = json.loads((second_pair / "simulation.json").read_text())
    assert meta["source"] == load_scanner("1T").to_dict()
    assert meta["target"] == load_scanner("7T").to_dict()
    assert meta["clean"]["scanner"] == load_scanner("7T").clean().to_dict()
    assert meta["clean"]["folder"] == "images/7T-clean"
    with (second_pair / "subjects.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    held_out = sorted({r["subject"] for r in rows if r["split"] == "test"})
    assert meta["clean"]["subjects"] == held_out and len(held_out) == 2
    for row in rows:
        on_target = row["site"] == "7T" and row["split"] == "test"
        want = f"images/7T-clean/{row['subject']}_T1w.nii.gz" if on_target else ""
        assert row["clean"] == want
    entries = read_subjects(second_pair / "subjects.csv")
    assert {e.clean for e in entries if e.clean} == {
        second_pair / "images" / "7T-clean" / f"{s}_T1w.nii.gz" for s in held_out
    }


def test_clean_render_is_the_target_render_without_noise_and_bias(second_pair: Path) -> None:
    entries = {(e.subject, e.site): e for e in read_subjects(second_pair / "subjects.csv")}
    subject = sorted(s for s, site in entries if site == "7T" and entries[s, site].clean)[0]
    entry = entries[subject, "7T"]
    assert entry.clean is not None
    stored = _nifti(entry.clean)
    clean = np.asarray(stored.dataobj)
    noisy = np.asarray(_nifti(entry.image).dataobj).astype(np.float64)
    # Independent re-render: same anatomy seed, the 7T profile without noise and bias field.
    anatomy = warp_anatomy(load_mni152_anatomy(2), _derived_seed(3, _ANATOMY, int(subject[4:])))
    noiseless = dataclasses.replace(load_scanner("7T"), noise=0.0, bias_amplitude=0.0)
    want = np.clip(np.rint(_render(anatomy, noiseless)), 0, 32767).astype(np.int16)
    assert stored.get_data_dtype() == np.int16
    np.testing.assert_array_equal(clean, want)
    np.testing.assert_allclose(stored.affine, _nifti(entry.image).affine)
    labels = np.asarray(_nifti(entry.label).dataobj)
    np.testing.assert_array_equal(labels, tissue_labels(anatomy))
    # No noise: the background is exactly 0 where the scan shows Rayleigh noise.
    far = labels == 0
    assert (clean[far] == 0).mean() > 0.9 and noisy[far].mean() > 20
    # No bias: WM varies far less in the clean render than in the scan.
    wm = labels == 3
    assert clean[wm].std() < 0.8 * noisy[wm].std()


def test_preview_shows_the_clean_target_row(second_pair: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    with_clean = imread(preview_subject(second_pair, tmp_path / "with.png"))
    copy = tmp_path / "old"
    shutil.copytree(second_pair, copy)
    listing = copy / "subjects.csv"
    with listing.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    with listing.open("w", newline="") as handle:  # a listing from before the clean column
        writer = csv.DictWriter(handle, fieldnames=["subject", "site", "image", "label", "split"])
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k != "clean"} for row in rows)
    without = imread(preview_subject(copy, tmp_path / "without.png"))
    assert with_clean.shape[1] == without.shape[1] and with_clean.shape[0] > without.shape[0]
