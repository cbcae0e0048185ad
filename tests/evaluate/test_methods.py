"""The classical baselines as the evaluation runs them: WhiteStripe and the N4 rows."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from segrenorm.cli.evaluate_cmd import _BASELINES
from segrenorm.data.prepare import prepare_cache
from segrenorm.data.slice_cache import SliceCache
from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.baselines import WhiteStripe
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.methods import (
    BASELINES,
    N4_BASELINES,
    baseline_slices,
    cache_is_bias_corrected,
    n4_corrected_baselines,
)
from segrenorm.volumes.bias import DEFAULT_BIAS_CORRECTION, NO_BIAS_CORRECTION

N4_ROWS = ["histogram", "denoise-histogram", "n4-histogram", "n4-denoise-histogram"]


@pytest.fixture(scope="module")
def n4_data(eval_study: SimpleNamespace) -> EvalData:
    """The tiny study prepared with N4 (prepare's default)."""
    data = EvalData.from_cache(eval_study.cache)
    assert cache_is_bias_corrected(data)
    return data


@pytest.fixture(scope="module")
def plain_data(eval_study: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> EvalData:
    """The same study prepared without bias correction (the same split: listed)."""
    root = tmp_path_factory.mktemp("no-n4")
    cache = prepare_cache(
        eval_study.records, root / "cache", class_names=["background", "csf", "gm", "wm"],
        pad_multiple=8, bias_correction=NO_BIAS_CORRECTION, progress=False,
    )  # fmt: skip
    data = EvalData.from_cache(cache)
    assert not cache_is_bias_corrected(data)
    return data


def test_every_classical_pipeline_is_a_default() -> None:
    assert BASELINES == ("none", "zscore", "histogram", "nyul", "whitestripe",
                         "denoise-histogram", "n4-histogram", "n4-denoise-histogram")  # fmt: skip
    assert tuple(_BASELINES.split(",")) == BASELINES  # the CLI's default is the same list
    assert set(N4_BASELINES.values()) <= set(BASELINES)


def test_whitestripe_row_puts_each_source_stripe_on_the_target_stripe(n4_data: EvalData) -> None:
    out = baseline_slices(n4_data, ["none", "whitestripe"])["whitestripe"]
    # The target scale by hand: the mean stripe mean and std of the target training subjects.
    cache, site = n4_data.cache, n4_data.target.site
    stripes = []
    for entry in cache.manifest["subjects"]:
        if entry["site"] == site and entry["split"] == "train":
            rows = slice(entry["first_row"], entry["first_row"] + entry["n_slices"])
            fg = np.asarray(cache.images(site)[rows])[np.asarray(cache.masks(site)[rows]) > 0]
            stripes.append(WhiteStripe().stripe(fg))
    mean = float(np.mean([s.mean for s in stripes]))
    std = float(np.mean([s.std for s in stripes]))
    for positions in n4_data.source.subject_rows().values():
        x, mask = n4_data.source.images[positions], n4_data.source.masks[positions]
        own = WhiteStripe().stripe(x[mask])
        stripe = mask & (x >= own.lower) & (x <= own.upper)
        assert float(out[positions][stripe].mean()) == pytest.approx(mean, abs=1e-5)
        assert float(out[positions][stripe].std()) == pytest.approx(std, rel=1e-3)
        assert np.all(out[positions][~mask] == -1.0)


def test_n4_rows_repeat_the_plain_rows_on_an_n4_cache(n4_data: EvalData) -> None:
    out = baseline_slices(n4_data, N4_ROWS)
    np.testing.assert_array_equal(out["n4-histogram"], out["histogram"])
    np.testing.assert_array_equal(out["n4-denoise-histogram"], out["denoise-histogram"])
    assert n4_corrected_baselines(n4_data, ["none", *N4_ROWS]) == ["none", *N4_ROWS]


def test_n4_rows_correct_the_source_volumes_of_a_cache_without_n4(
    n4_data: EvalData, plain_data: EvalData
) -> None:
    seen: list[str] = []
    out = baseline_slices(plain_data, N4_ROWS, on_subject=lambda i, n, s: seen.append(s))
    assert seen == ["t0", "t1"]  # the volumes were read and corrected once, for both rows
    assert n4_corrected_baselines(plain_data, ["none", *N4_ROWS]) == N4_ROWS[2:]
    assert not np.array_equal(out["n4-histogram"], out["histogram"])
    # The corrected source slices are those prepare writes with N4: the n4-histogram row
    # matches, on them, with the plain cache's target reference.
    corrected = dataclasses.replace(
        plain_data, source=dataclasses.replace(plain_data.source, images=n4_data.source.images)
    )
    np.testing.assert_array_equal(n4_data.source.masks, plain_data.source.masks)
    by_hand = baseline_slices(corrected, ["histogram", "denoise-histogram"])
    np.testing.assert_allclose(out["n4-histogram"], by_hand["histogram"], atol=1e-5)
    np.testing.assert_allclose(out["n4-denoise-histogram"], by_hand["denoise-histogram"], atol=1e-5)
    # An old manifest without the key reads as "no correction" too.
    manifest = {k: v for k, v in plain_data.cache.manifest.items() if k != "bias_correction"}
    old = EvalData.from_cache(SliceCache(plain_data.cache.path, manifest))
    assert n4_corrected_baselines(old, BASELINES) == ["n4-histogram", "n4-denoise-histogram"]


def test_n4_rows_need_the_source_volumes(plain_data: EvalData, tmp_path: Path) -> None:
    subjects = [dict(s) for s in plain_data.cache.manifest["subjects"]]
    moved = tmp_path / "gone.nii.gz"
    for entry in subjects:
        if entry["site"] == plain_data.source.site and entry["subject"] == "t1":
            entry["image"] = str(moved)
    manifest = {**plain_data.cache.manifest, "subjects": subjects}
    data = EvalData.from_cache(SliceCache(plain_data.cache.path, manifest))
    with pytest.raises(InputError, match=f"{moved}: the source volume of subject t1 is missing"):
        baseline_slices(data, ["n4-histogram"])
    # The plain rows do not need them.
    assert set(baseline_slices(data, ["none", "histogram"])) == {"none", "histogram"}


def test_bad_baseline_requests_are_refused(n4_data: EvalData) -> None:
    with pytest.raises(ConfigError, match="unknown baseline\\(s\\) 'n5-histogram'"):
        baseline_slices(n4_data, ["none", "n5-histogram"])
    with pytest.raises(
        ConfigError, match="need a bias correction that corrects, got method='none'"
    ):
        baseline_slices(n4_data, ["n4-histogram"], bias=NO_BIAS_CORRECTION)
    assert DEFAULT_BIAS_CORRECTION.enabled
    # A volume WhiteStripe cannot normalize names the baseline and the subject.
    flat = np.where(n4_data.source.masks, np.float32(0.25), np.float32(-1.0))
    constant = dataclasses.replace(n4_data, source=dataclasses.replace(n4_data.source, images=flat))
    with pytest.raises(InputError, match="baseline 'whitestripe', source subject t0: WhiteStripe"):
        baseline_slices(constant, ["whitestripe"])


def test_compare_command_takes_a_narrower_baseline_list(
    eval_study: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from segrenorm.cli import main

    out = tmp_path / "cmp"
    code = main(["compare", "--cache", str(eval_study.cache), "--out", str(out),
                 "--baselines", "none,whitestripe,magic"])  # fmt: skip
    assert code == 2
    assert "unknown baseline(s) 'magic': choose from none, zscore" in capsys.readouterr().err
    assert not out.exists()
