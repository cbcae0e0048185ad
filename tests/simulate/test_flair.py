"""The FLAIR benchmark: profiles, contrast, subjects per scanner, files, listing, cache, CLI."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from segrenorm.cli import simulate_cmd
from segrenorm.data.listing import read_listing
from segrenorm.data.prepare import prepare_cache
from segrenorm.errors import ConfigError, InputError
from segrenorm.simulate.anatomy import load_mni152_anatomy, tissue_labels, warp_anatomy
from segrenorm.simulate.benchmark import _derived_seed
from segrenorm.simulate.flair import (
    _ANATOMY,
    _LESIONS,
    FLAIR_COLUMNS,
    render_flair,
    simulate_flair,
)
from segrenorm.simulate.lesions import LesionSettings, add_lesions
from segrenorm.simulate.scanners import SCANNERS, ScannerProfile, apply_scanner, load_scanner
from segrenorm.simulate.subjects import read_subjects
from segrenorm.volumes.bias import BiasCorrection

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FLAIR = ("SA", "SV", "PI")


def _array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="segrenorm")
    simulate_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(scope="module")
def flair(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One training subject per scanner, one test and one validation subject, via the CLI."""
    out = tmp_path_factory.mktemp("flair") / "flair"
    argv = ["simulate", "flair", "--out", str(out), "--subjects-per-scanner", "1",
            "--test-fraction", "0.2", "--val-fraction", "0.2", "--seed", "2"]  # fmt: skip
    assert _cli(argv) == 0
    return out


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "subjects.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


# --- profiles ----------------------------------------------------------------------------------


def test_flair_profiles_differ_as_stated() -> None:
    sa, sv, pi = (load_scanner(name) for name in FLAIR)
    ratios = [p.lesion / p.wm for p in (sa, sv, pi) if p.lesion is not None]
    assert ratios == sorted(ratios) and len(set(ratios)) == 3  # lesion-to-WM: SA < SV < PI
    assert sa.noise > sv.noise > pi.noise  # the target of each direction is the cleaner one
    assert sa.bias_amplitude > pi.bias_amplitude > sv.bias_amplitude
    for profile in (sa, sv, pi):
        assert profile.csf < profile.wm < profile.gm  # FLAIR: CSF suppressed, GM over WM
        assert ScannerProfile.from_dict(profile.to_dict()) == profile
        with resources.as_file(
            resources.files("segrenorm.simulate").joinpath("profiles", f"{profile.name}.yaml")
        ) as path:
            assert load_scanner(path) == profile
    # Resolution as blur, 1.2 x Table I's voxel: SA 1.2 x 1 x 1 mm, PI 1.1 x 0.5 x 0.5, SV 0.7.
    assert (sa.fwhm_through_mm, sa.fwhm_inplane_mm, sa.slice_axis) == (1.44, 1.2, 0)
    assert (pi.fwhm_through_mm, pi.fwhm_inplane_mm, pi.slice_axis) == (1.32, 0.6, 0)
    assert sv.fwhm_through_mm == sv.fwhm_inplane_mm == pytest.approx(0.84)


def test_t1_profiles_keep_their_form() -> None:
    assert list(SCANNERS["3T"].to_dict()) == [
        "name", "csf", "gm", "wm", "bias_amplitude", "bias_smoothness_mm", "fwhm_inplane_mm",
        "fwhm_through_mm", "slice_axis", "noise", "gamma", "texture", "scale",
    ]  # fmt: skip
    assert SCANNERS["3T"].lesion is None and "lesion" in load_scanner("SA").to_dict()
    with pytest.raises(ConfigError, match=r"'lesion' = -1 is outside"):
        ScannerProfile.from_dict({"name": "x", "csf": 0.1, "gm": 1.2, "wm": 1, "lesion": -1})
    with pytest.raises(ConfigError, match=r"field 'lesion' must be a finite number"):
        ScannerProfile(name="x", csf=0.1, gm=1.2, wm=1.0, lesion="bright")  # type: ignore[arg-type]


def test_a_lesion_map_needs_a_lesion_intensity(tiny_kit: SimpleNamespace) -> None:
    phantom = tiny_kit.anatomy()
    args = (phantom.csf, phantom.gm, phantom.wm, phantom.texture)
    with pytest.raises(ConfigError, match=r"profile '3T' has no 'lesion' intensity"):
        apply_scanner(*args, SCANNERS["3T"], phantom.zooms, np.random.default_rng(0),
                      lesion=np.zeros_like(phantom.wm))  # fmt: skip


def test_rendered_contrast_noise_and_lesion_ratio(tiny_kit: SimpleNamespace) -> None:
    phantom = tiny_kit.anatomy()
    labels = tissue_labels(phantom)
    lesion = np.zeros_like(phantom.wm)
    lesion[17:23, 17:23, 9:15] = phantom.wm[17:23, 17:23, 9:15]  # a block in the WM core
    core = lesion == 1
    wm = phantom.wm - lesion
    for name in FLAIR:
        scanner = load_scanner(name)
        flat = dataclasses.replace(scanner.clean(), texture=0.0, fwhm_inplane_mm=0.0,
                                   fwhm_through_mm=0.0)  # fmt: skip
        image = apply_scanner(phantom.csf, phantom.gm, wm, phantom.texture, flat,
                              phantom.zooms, np.random.default_rng(0), lesion=lesion)  # fmt: skip
        nawm = np.median(image[(labels == 3) & (lesion == 0)])
        assert scanner.lesion is not None
        want = (scanner.lesion / scanner.wm) ** scanner.gamma  # gamma acts around WM
        assert np.median(image[core]) / nawm == pytest.approx(want, rel=1e-4), name
        noisy = apply_scanner(phantom.csf, phantom.gm, wm, phantom.texture, scanner,
                              phantom.zooms, np.random.default_rng(0), lesion=lesion)  # fmt: skip
        sigma = scanner.noise * scanner.wm * scanner.scale
        background = noisy[phantom.support == 0]  # Rayleigh: mean sigma * sqrt(pi / 2)
        assert background.mean() / np.sqrt(np.pi / 2) == pytest.approx(sigma, rel=0.05), name


def test_clean_flair_orders_csf_wm_gm_lesion() -> None:
    subject = warp_anatomy(load_mni152_anatomy(2), 3)
    lesions = add_lesions(subject, np.random.default_rng(3), LesionSettings(mean_count=25.0))
    assert len(lesions.records) > 5
    labels = tissue_labels(subject)
    lesion = lesions.mask == 1
    for name in FLAIR:
        image = render_flair(subject, lesions, load_scanner(name).clean(), np.random.default_rng(0))
        medians = [np.median(image[(labels == k) & ~lesion]) for k in (1, 3, 2)]
        medians.append(np.median(image[lesion]))
        assert medians == sorted(medians) and len(set(medians)) == 4, (name, medians)


# --- the benchmark folder ---------------------------------------------------------------------


def test_subjects_are_never_shared_except_held_out(flair: Path) -> None:
    rows = _rows(flair)
    assert list(rows[0]) == list(FLAIR_COLUMNS)
    sites: dict[str, set[str]] = {}
    splits: dict[str, set[str]] = {}
    for row in rows:
        sites.setdefault(row["subject"], set()).add(row["site"])
        splits.setdefault(row["subject"], set()).add(row["split"])
        subject, site = row["subject"], row["site"]
        assert row["image"] == f"images/{site}/{subject}_FLAIR.nii.gz"
        assert row["label"] == f"labels/{site}/{subject}_lesions.nii.gz"
        assert row["tissue"] == f"labels/{site}/{subject}_tissue.nii.gz"
        held_out = row["split"] != "train"
        assert row["clean"] == (f"images/{site}-clean/{subject}_FLAIR.nii.gz" if held_out else "")
    train = [s for s, v in splits.items() if v == {"train"}]
    assert len(train) == 3 and all(len(sites[s]) == 1 for s in train)
    assert sorted(next(iter(sites[s])) for s in train) == sorted(FLAIR)
    held = {s: next(iter(v)) for s, v in splits.items() if v != {"train"}}
    assert sorted(held.values()) == ["test", "val"]
    assert all(sites[s] == set(FLAIR) and len(splits[s]) == 1 for s in held)
    meta = json.loads((flair / "simulation.json").read_text())
    assert meta["directions"] == [["SA", "SV"], ["SA", "PI"], ["SV", "PI"]]
    assert meta["scanners"] == [load_scanner(n).to_dict() for n in FLAIR]
    assert meta["counts"]["volumes"] == len(rows) == 3 + 2 * 3
    assert meta["clean"]["subjects"] == sorted(held)


def test_files_match_the_recorded_lesions_and_a_re_render(flair: Path) -> None:
    meta = json.loads((flair / "simulation.json").read_text())
    rows = _rows(flair)
    held = sorted({r["subject"] for r in rows if r["split"] == "test"})[0]
    masks = [_array(flair / r["label"]) for r in rows if r["subject"] == held]
    assert all(np.array_equal(m, masks[0]) for m in masks)  # one subject, one truth
    for row in rows:
        mask, stats = _array(flair / row["label"]), meta["lesions"][row["subject"]]
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert ndimage.label(mask, structure=np.ones((3, 3, 3)))[1] == stats["count"]
        assert len(stats["volumes_mm3"]) == stats["count"] <= 30
        assert all(3.0 <= v <= 1500.0 for v in stats["volumes_mm3"])
        assert sum(stats["classes"].values()) == stats["count"]
        assert set(np.unique(_array(flair / row["tissue"]))) <= {0, 1, 2, 3}
    # Independent re-render of the held-out subject's clean PI truth from its seeds.
    index = int(held.split("-")[1])
    subject = warp_anatomy(load_mni152_anatomy(2), _derived_seed(2, _ANATOMY, index))
    lesions = add_lesions(subject, np.random.default_rng(_derived_seed(2, _LESIONS, index)))
    assert np.array_equal(lesions.mask, masks[0])
    want = render_flair(subject, lesions, load_scanner("PI").clean(), np.random.default_rng(5))
    stored = _array(flair / "images" / "PI-clean" / f"{held}_FLAIR.nii.gz")
    np.testing.assert_array_equal(stored, np.clip(np.rint(want), 0, 32767).astype(np.int16))


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    def run(out: Path) -> dict[str, bytes]:
        simulate_flair(out, subjects_per_scanner=1, scanners=["SA", "PI"], test_fraction=0.0,
                       val_fraction=0.0, seed=4)  # fmt: skip
        return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.*")}

    first = run(tmp_path / "a")
    assert len(first) == 2 * 3 + 2 and first == run(tmp_path / "b")


def test_listing_loads_and_prepares_a_three_site_cache(flair: Path, tmp_path: Path) -> None:
    assert len(read_subjects(flair / "subjects.csv")) == 9
    records = read_listing(flair / "subjects.csv")  # the tissue column is ignored
    assert len(records) == 9 and {r.site for r in records} == set(FLAIR)
    assert all((r.clean is None) == (r.split == "train") for r in records)
    assert all(r.label is not None and r.label.name.endswith("_lesions.nii.gz") for r in records)
    cache = prepare_cache(
        records, tmp_path / "cache", sites=list(FLAIR), target="PI",
        bias_correction=BiasCorrection(method="none"), progress=False,
    )  # fmt: skip
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["n_classes"] == 2
    assert list(manifest["sites"].values()) == list(FLAIR)


def test_preview_shows_every_scanner(flair: Path, tmp_path: Path) -> None:
    from matplotlib.image import imread

    out = tmp_path / "p.png"
    assert _cli(["simulate", "preview", str(flair), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC
    # Three scanners, the clean PI render and the lesion overlay: five rows of 3.2 inches.
    assert imread(out).shape[0] == pytest.approx(5 * 3.2 * 110, rel=0.02)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"scanners": ["SA", "3T"]}, r"scanner '3T' has no 'lesion' intensity"),
        ({"scanners": ["SA"]}, r"give at least two FLAIR scanners"),
        ({"scanners": ["SA", "SA"]}, r"scanner name 'SA' is given twice"),
        ({"scanners": ["SA", "nope.yaml"]}, r"unknown scanner 'nope.yaml'"),
        ({"test_fraction": 0.6, "val_fraction": 0.4}, r"add up to 1 or more"),
        ({"test_fraction": 1.0}, r"test_fraction=1.0 must lie in \[0, 1\)"),
        ({"val_fraction": -0.1}, r"val_fraction=-0.1 must lie in \[0, 1\)"),
        ({"subjects_per_scanner": 0}, r"subjects_per_scanner=0 must be an integer >= 1"),
        ({"workers": True}, r"workers=True must be an integer >= 1"),
        ({"resolution": 3}, r"resolution=3 is not supported"),
        (
            {"labels": "tissue"},
            r"labels='tissue' is not a FLAIR label set; use one of lesion, "
            r"tissue\+lesion",
        ),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=message):
        simulate_flair(tmp_path / "o", **kwargs)  # type: ignore[arg-type]
    assert not (tmp_path / "o").exists()


def test_clean_folder_names_and_busy_out_dir_are_refused(tmp_path: Path) -> None:
    clash = dataclasses.replace(load_scanner("SV"), name="SA-clean")
    with pytest.raises(ConfigError, match=r"scanner 'SA-clean' has the name of the clean-render"):
        simulate_flair(tmp_path / "o", scanners=["SA", clash])
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(InputError, match=r"full: output folder is not empty"):
        simulate_flair(tmp_path / "full")


def test_tissue_plus_lesion_labels_put_lesions_over_the_tissue_map(tmp_path: Path) -> None:
    out = tmp_path / "tl"
    argv = ["simulate", "flair", "--out", str(out), "--subjects-per-scanner", "1",
            "--scanners", "SA", "PI", "--test-fraction", "0", "--val-fraction", "0",
            "--labels", "tissue+lesion", "--seed", "2"]  # fmt: skip
    assert _cli(argv) == 0
    rows = _rows(out)
    assert rows and all(r["label"].endswith("_tissue-lesions.nii.gz") for r in rows)
    lesion_voxels = 0
    for row in rows:
        combined = _array(out / row["label"])
        tissue = _array(out / row["tissue"])
        mask = _array(out / row["label"].replace("_tissue-lesions", "_lesions"))
        expected = tissue.copy()
        expected[mask > 0] = 4  # by hand: the lesion class sits over whatever tissue was there
        np.testing.assert_array_equal(combined, expected)
        lesion_voxels += int((mask > 0).sum())
    assert lesion_voxels > 0  # the overlay was exercised
    meta = json.loads((out / "simulation.json").read_text())
    names = ["background", "CSF", "GM", "WM", "lesion"]
    assert meta["labels"] == {"set": "tissue+lesion", "class_names": names}
