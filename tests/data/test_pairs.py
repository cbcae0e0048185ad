"""Tests for the pair view of a cache of more than two sites (``SliceCache.open(pair=...)``)."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from segrenorm.data.datasets import UnpairedSliceDataset
from segrenorm.data.facts import inference_facts
from segrenorm.data.pairs import choose_pair
from segrenorm.data.slice_cache import SliceCache
from segrenorm.errors import ConfigError

ARRAYS = ("images", "labels", "masks", "slices")


def raw(cache: Path, key: str, name: str) -> np.ndarray:
    """An array of one physical site folder, read without segrenorm."""
    return np.load(cache / key / f"{name}.npy")


def test_the_study_has_three_site_folders(three_sites: SimpleNamespace) -> None:
    manifest = json.loads((three_sites.cache / "manifest.json").read_text())
    assert manifest["sites"] == {"A": "siteA", "B": "siteB", "C": "siteC"}
    assert all((three_sites.cache / key / "images.npy").is_file() for key in "ABC")


@pytest.mark.parametrize("pair", [("siteC", "siteA"), ("C", "A"), ("siteC", "A")])
def test_pair_view_reads_the_physical_folders(
    three_sites: SimpleNamespace, pair: tuple[str, str]
) -> None:
    cache = three_sites.cache
    view = SliceCache.open(cache, pair=pair)
    assert view.sites == ("A", "B")
    assert view.site_names == ("siteC", "siteA")
    assert view.folders == {"A": "C", "B": "A"}
    for site, key in (("A", "C"), ("B", "A")):
        assert view.n_rows(site) == len(raw(cache, key, "images"))
        np.testing.assert_array_equal(view.images(site), raw(cache, key, "images"))
        np.testing.assert_array_equal(view.labels(site), raw(cache, key, "labels"))
        np.testing.assert_array_equal(view.masks(site), raw(cache, key, "masks"))
        np.testing.assert_array_equal(view.slices(site), raw(cache, key, "slices"))
    # The view's A is not the cache's folder A: the sites really differ.
    assert not np.array_equal(view.images("A"), raw(cache, "A", "images"))


def test_pair_view_rows_and_subjects_match_the_manifest(three_sites: SimpleNamespace) -> None:
    cache = three_sites.cache
    full = json.loads((cache / "manifest.json").read_text())
    view = SliceCache.open(cache, pair=("siteC", "siteB"))
    for site, key in (("A", "C"), ("B", "B")):
        entries = [s for s in full["subjects"] if s["site"] == key]
        # By hand: each subject's rows from first_row/n_slices, and the test subject's rows.
        owner = np.concatenate([[s["subject"]] * s["n_slices"] for s in entries])
        rows = np.arange(len(owner))
        assert view.subjects_of(site, rows).tolist() == owner.tolist()
        assert [view.subject_of(site, int(r)) for r in rows] == owner.tolist()
        test = [s for s in entries if s["split"] == "test"]
        expected = np.concatenate([np.arange(s["first_row"], s["first_row"] + s["n_slices"])
                                   for s in test])  # fmt: skip
        np.testing.assert_array_equal(view.rows(site, "test"), expected)
        # Column 0 of slices.npy indexes the whole cache's subjects: still this subject.
        index = raw(cache, key, "slices")
        assert [full["subjects"][i]["subject"] for i in index[:, 0]] == owner.tolist()


def test_projected_manifest_feeds_the_inference_facts(three_sites: SimpleNamespace) -> None:
    full = json.loads((three_sites.cache / "manifest.json").read_text())
    view = SliceCache.open(three_sites.cache, pair=("siteC", "siteA"))
    manifest = view.manifest
    assert manifest["sites"] == {"A": "siteC", "B": "siteA"}
    assert manifest["pair"] == {"folders": {"A": "C", "B": "A"}, "cache_sites": full["sites"]}
    assert {s["site"] for s in manifest["subjects"]} == {"A", "B"}
    kept = [(s["subject"], s["site"]) for s in manifest["subjects"]]
    expected = [(s["subject"], {"C": "A", "A": "B"}[s["site"]]) for s in full["subjects"]
                if s["site"] in "CA"]  # fmt: skip
    assert sorted(kept) == sorted(expected)
    facts = inference_facts(manifest)
    assert facts["site_names"] == {"A": "siteC", "B": "siteA"}
    # Site A's scale is the median over siteC's training subjects, by hand.
    trained = [s["scaling"] for s in full["subjects"] if s["site"] == "C" and s["split"] == "train"]
    assert facts["scaling"]["A"]["high"] == pytest.approx(np.median([t["high"] for t in trained]))
    assert facts["scaling"]["A"]["low"] == pytest.approx(np.median([t["low"] for t in trained]))
    # The projection is a copy: the cache's own manifest is untouched.
    assert json.loads((three_sites.cache / "manifest.json").read_text()) == full


def test_many_sites_without_a_pair_are_refused(three_sites: SimpleNamespace) -> None:
    cache = three_sites.cache
    with pytest.raises(
        ConfigError,
        match=r"holds 3 sites \(siteA \(A\), siteB \(B\), siteC \(C\)\).*choose them with "
        r"--set data.source=NAME --set data.target=NAME",
    ):
        SliceCache.open(cache)
    with pytest.raises(ConfigError, match=r"source site 'siteX' is not in the cache .*siteC \(C\)"):
        SliceCache.open(cache, pair=("siteX", "siteA"))
    with pytest.raises(ConfigError, match=r"target site 'nowhere' is not in the cache"):
        SliceCache.open(cache, pair=("siteA", "nowhere"))
    with pytest.raises(ConfigError, match=r"same site 'siteB' \(B\)"):
        SliceCache.open(cache, pair=("siteB", "B"))
    with pytest.raises(ConfigError, match="name the target site too"):
        SliceCache.open(cache, pair=("siteB", None))


def test_two_site_cache_without_pair_is_as_before(tiny_cache: Path) -> None:
    plain = SliceCache.open(tiny_cache)
    assert plain.manifest == json.loads((tiny_cache / "manifest.json").read_text())
    assert "pair" not in plain.manifest and plain.folders == {"A": "A", "B": "B"}
    same = SliceCache.open(tiny_cache, pair=("1.5T", "3T"))
    assert same.manifest == plain.manifest
    assert SliceCache.open(tiny_cache, pair=(None, "3T")).manifest == plain.manifest
    swapped = SliceCache.open(tiny_cache, pair=("3T", None))
    assert swapped.site_names == ("3T", "1.5T")
    np.testing.assert_array_equal(swapped.images("A"), raw(tiny_cache, "B", "images"))
    np.testing.assert_array_equal(swapped.images("B"), raw(tiny_cache, "A", "images"))


def test_choose_pair_by_name_key_and_default() -> None:
    sites = {"A": "Guys", "B": "HH", "C": "IOP"}
    assert choose_pair("c", sites, ("IOP", "HH")) == ("C", "B")
    assert choose_pair("c", sites, ("C", "Guys")) == ("C", "A")
    assert choose_pair("c", {"A": "x", "B": "y"}, None) == ("A", "B")
    # A name wins over a key: a site named "B" is that site, not key B.
    assert choose_pair("c", {"A": "B", "B": "A"}, ("B", "A")) == ("A", "B")


def test_pair_view_survives_pickling_for_workers(
    three_sites: SimpleNamespace, tmp_path: Path
) -> None:
    cache = shutil.copytree(three_sites.cache, tmp_path / "cache")
    view = SliceCache.open(cache, pair=("siteC", "siteA"))
    view.images("A")  # mapped in this process
    clone = pickle.loads(pickle.dumps(view))
    assert clone._maps == {}  # a worker maps its own arrays
    assert clone.site_names == ("siteC", "siteA")
    np.testing.assert_array_equal(clone.images("A"), raw(cache, "C", "images"))
    # The dataset a DataLoader worker receives: its source rows are siteC's slices.
    dataset = pickle.loads(pickle.dumps(UnpairedSliceDataset(view, crop_size=0, seed=0)))
    sample = dataset[0]
    row = int(sample["a_row"])
    np.testing.assert_array_equal(sample["a"][0].numpy(), raw(cache, "C", "images")[row])
    np.testing.assert_array_equal(
        sample["b"][0].numpy(), raw(cache, "A", "images")[int(sample["b_row"])]
    )
