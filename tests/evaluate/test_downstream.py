"""The segmentation lens over segmentor seeds: means and spreads against numpy and by hand."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from segrenorm.errors import ConfigError
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.downstream import seed_mean_std
from segrenorm.evaluate.overlap import subject_scores
from segrenorm.evaluate.segmentors import predict_labels, train_segmentor
from segrenorm.evaluate.suite import EvaluationConfig, MethodInput, run_evaluation


@pytest.fixture(scope="module")
def controls(eval_study: SimpleNamespace) -> SimpleNamespace:
    """The held-out data and the oracle (each source slice's true target slice)."""
    data = EvalData.from_cache(eval_study.cache)
    keys = {site: list(zip(part.subjects, part.index.tolist(), strict=True))
            for site, part in (("source", data.source), ("target", data.target))}  # fmt: skip
    pairs = np.asarray([keys["target"].index(key) for key in keys["source"]])
    return SimpleNamespace(data=data, oracle=data.target.images[pairs])


def _same(a: Any, b: Any) -> bool:
    """Equal JSON, NaN included (``nan != nan`` would fail a plain comparison)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _mean_dice(row: dict[str, Any]) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in row["dice"]["mean"]], np.float64)


def test_seed_mean_std_skips_undefined_seeds() -> None:
    assert seed_mean_std([0.5, None, float("nan"), 0.7]) == pytest.approx(
        (0.6, np.std([0.5, 0.7], ddof=1))
    )
    assert seed_mean_std([0.5]) == (0.5, None)  # one seed: no spread
    assert seed_mean_std([None, float("nan")]) == (None, None)


def _rows_by_hand(
    data: EvalData, slices: dict[str, np.ndarray], config: Any, seed: int
) -> dict[str, Any]:
    """One segmentor pair of ``seed`` trained and scored here, as the single-seed lens did."""
    n, batch = data.n_classes, config.batch_size
    segmentor = dataclasses.replace(config.segmentor, seed=seed)
    nets = {site: train_segmentor(*data.train_slices(site), n, segmentor)
            for site in ("source", "target")}  # fmt: skip
    truth, subjects = data.source.labels, data.source.subjects
    own = predict_labels(nets["source"], data.source.images, batch_size=batch)
    rows = {"source→source": subject_scores(own, truth, subjects, n)}
    for name, images in slices.items():
        pred = predict_labels(nets["target"], images, batch_size=batch)
        rows[f"target→{name}"] = subject_scores(pred, truth, subjects, n)
    return rows


def test_one_segmentor_seed_gives_exactly_the_single_seed_figures(
    controls: SimpleNamespace, eval_kit: SimpleNamespace
) -> None:
    data = controls.data
    slices = {"none": data.source.images, "oracle": controls.oracle}
    config = eval_kit.evaluation(segmentor_seeds=1).with_seed(5)
    results, _ = run_evaluation(data, {k: MethodInput(v) for k, v in slices.items()}, config)
    seg = results["segmentation"]
    assert seg["segmentor_seeds"] == [5]
    want = _rows_by_hand(data, slices, config, seed=5)
    for name, row in want.items():
        got = seg["rows"][name]
        for key in ("dice", "iou"):
            assert got[key]["mean"] == row[key]["mean"] and got[key]["std"] == row[key]["std"]
            assert got[key]["per_seed"] == [row[key]["mean"]]
            assert all(v is None for v in got[key]["seed_std"])  # one seed: no spread
        assert got["generalized_dice"]["mean"] == row["generalized_dice"]["mean"]
        assert got["per_subject"] == {
            subject: {k: scores[k] for k in ("dice", "iou", "generalized_dice")}
            for subject, scores in row["per_subject"].items()
        }
    upper, lower = _mean_dice(want["source→source"]), _mean_dice(want["target→none"])
    for name in slices:
        with np.errstate(divide="ignore", invalid="ignore"):
            recovery = (_mean_dice(want[f"target→{name}"]) - lower) / (upper - lower)
        recovery[~(upper - lower > 0)] = np.nan
        assert _same(seg["gap_recovery"][name], [float(v) for v in recovery]), name


def test_two_segmentor_seeds_report_their_mean_and_spread(
    controls: SimpleNamespace, eval_kit: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    import segrenorm.evaluate.downstream as downstream
    import segrenorm.evaluate.suite as suite

    calls: dict[str, list[Any]] = {"autoencoder": [], "segmentor": []}

    def count(key: str, fn: Any, record: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            calls[key].append(record(*args))
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(
        suite, "train_autoencoder", count("autoencoder", suite.train_autoencoder, lambda *a: 1)
    )
    monkeypatch.setattr(downstream, "train_segmentor", count(
        "segmentor", downstream.train_segmentor, lambda *a: a[3].seed))  # fmt: skip
    data = controls.data
    slices = {"none": data.source.images, "oracle": controls.oracle}
    # Segmentors trained long enough for a Dice gap at both seeds.
    config = eval_kit.evaluation(segmentor_seeds=2)
    config = dataclasses.replace(
        config, segmentor=dataclasses.replace(config.segmentor, iterations=40)
    )
    results, _ = run_evaluation(data, {k: MethodInput(v) for k, v in slices.items()}, config)
    # Only the segmentor pairs are trained per seed; the autoencoder (and KID) once.
    assert calls == {"autoencoder": [1], "segmentor": [0, 0, 1, 1]}
    seg = results["segmentation"]
    by_hand = [_rows_by_hand(data, slices, config, seed) for seed in (0, 1)]
    for name in ("source→source", "target→none", "target→oracle"):
        row = seg["rows"][name]
        for key in ("dice", "iou"):
            values = np.array([[np.nan if v is None else v for v in r[name][key]["mean"]]
                               for r in by_hand], np.float64)  # fmt: skip
            assert row[key]["per_seed"] == [r[name][key]["mean"] for r in by_hand]
            for c in range(values.shape[1]):
                if np.isnan(values[:, c]).any():
                    continue
                assert row[key]["mean"][c] == pytest.approx(values[:, c].mean(), rel=1e-12)
                assert row[key]["seed_std"][c] == pytest.approx(
                    np.std(values[:, c], ddof=1), rel=1e-12, abs=1e-15
                )
        gd = np.array([r[name]["generalized_dice"]["mean"] for r in by_hand], np.float64)
        assert row["generalized_dice"]["mean"] == pytest.approx(gd.mean(), rel=1e-12)
        assert row["generalized_dice"]["seed_std"] == pytest.approx(
            np.std(gd, ddof=1), rel=1e-12, abs=1e-15
        )
    spread: list[float] = []
    for name in slices:
        per_seed = []
        for r in by_hand:
            upper, lower = _mean_dice(r["source→source"]), _mean_dice(r["target→none"])
            with np.errstate(divide="ignore", invalid="ignore"):
                rec = (_mean_dice(r[f"target→{name}"]) - lower) / (upper - lower)
            rec[~(upper - lower > 0)] = np.nan
            per_seed.append(rec)
        table = np.array(per_seed)  # (seeds, classes), NaN where a seed has no gap
        for c in range(table.shape[1]):
            kept = table[:, c][~np.isnan(table[:, c])]
            mean, std = seg["gap_recovery"][name][c], seg["gap_recovery_seed_std"][name][c]
            np.testing.assert_allclose(mean, kept.mean() if kept.size else np.nan, rtol=1e-12)
            want = np.std(kept, ddof=1) if kept.size == 2 else np.nan
            np.testing.assert_allclose(std, want, rtol=1e-12, atol=1e-15)
            spread.append(0.0 if np.isnan(want) else float(want))
    assert max(spread) > 0  # a spread was measured somewhere


def test_segmentor_seeds_must_be_a_positive_integer() -> None:
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match=f"segmentor_seeds={bad!r} must be an integer >= 1"):
            EvaluationConfig(segmentor_seeds=bad)  # type: ignore[arg-type]
    assert EvaluationConfig(segmentor_seeds=2).with_seed(7).segmentor_seed_list == [7, 8]


def test_methods_sharing_one_array_are_segmented_once(
    controls: SimpleNamespace, eval_kit: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An n4- row on an N4 cache is the plain row's array: one prediction per seed, and the
    same rows as for an equal copy, which is segmented on its own."""
    import segrenorm.evaluate.downstream as downstream
    from segrenorm.evaluate.downstream import segmentation_lens

    calls: list[int] = []
    original = downstream.predict_labels

    def counting(net: Any, images: np.ndarray, **kwargs: Any) -> np.ndarray:
        calls.append(id(images))
        return original(net, images, **kwargs)

    monkeypatch.setattr(downstream, "predict_labels", counting)
    data = controls.data
    config = eval_kit.evaluation(segmentor_seeds=1)
    shared = controls.oracle
    slices = {"none": data.source.images, "a": shared, "b": shared, "copy": shared.copy()}
    results, predictions = segmentation_lens(
        data, slices, config.segmentor, seeds=[0], batch_size=config.batch_size
    )
    # source on source, target on target, then none, a (b reuses a's), copy.
    assert len(calls) == 5 and calls.count(id(shared)) == 1
    assert predictions["a"] is predictions["b"]
    np.testing.assert_array_equal(predictions["a"], predictions["copy"])
    rows = results["rows"]
    assert _same(rows["target→a"], rows["target→b"]) and _same(
        rows["target→a"], rows["target→copy"]
    )
