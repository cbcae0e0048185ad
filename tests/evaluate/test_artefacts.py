"""Background stripe energy (OCT): hand values of the definition, and the lens on a cache."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate import suite
from segrenorm.evaluate.artefacts import (
    ArtefactSettings,
    artefact_lens,
    background_masks,
    cache_modality,
    image_extent,
    stripe_energy,
)
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.methods import (
    BASELINES,
    baseline_slices,
    n4_corrected_baselines,
    omitted_baselines,
    output_region,
    translator_slices,
)

FLUID = ["background", "IRF", "SRF", "PED"]
PLANE = (28, 40)  # (A-scans, depth) of the unpadded B-scans
PADDED = (32, 48)
STRIPE = 0.05  # amplitude of the target background's stripes along A-scans (period 4)


def _stripes(shape: tuple[int, int], amplitude: float, period: float, axis: int) -> np.ndarray:
    """``amplitude sin(2 pi i / period)`` varying along ``axis``, constant along the other."""
    wave = amplitude * np.sin(2 * np.pi * np.arange(shape[axis]) / period)
    return wave[:, None] * np.ones(shape) if axis == 0 else wave[None, :] * np.ones(shape)


def test_column_stripes_give_half_their_squared_amplitude() -> None:
    rng = np.random.default_rng(0)
    shape, a = (64, 96), 0.05
    for period in (3.0, 5.0, 8.0):
        # Speckle of 0.02 on 64 rows: the stripe-noise cross term is about 1% of a^2 / 2.
        x = _stripes(shape, a, period, axis=1) + 0.02 * rng.standard_normal(shape)
        column, row = stripe_energy(x, np.ones(shape, bool))
        assert column == pytest.approx(a**2 / 2, rel=0.03), period
        assert row < 0.02 * a**2 / 2


def test_white_noise_alone_is_at_the_floor() -> None:
    rng = np.random.default_rng(1)
    for sigma in (0.05, 0.2):
        values = [stripe_energy(sigma * rng.standard_normal((64, 96)), np.ones((64, 96), bool))
                  for _ in range(5)]  # fmt: skip
        # Without the floor each would be about (m / L) sigma^2 / 64: ~0.9 sigma^2 / 64.
        assert np.mean(values) < 0.1 * 0.9 * sigma**2 / 64, sigma


def test_a_row_stripe_shows_only_in_the_row_energy() -> None:
    rng = np.random.default_rng(2)
    shape, a = (96, 64), 0.04
    x = _stripes(shape, a, 6.0, axis=0) + 0.02 * rng.standard_normal(shape)
    column, row = stripe_energy(x, np.ones(shape, bool))
    assert row == pytest.approx(a**2 / 2, rel=0.03)
    assert column < 0.02 * a**2 / 2


def test_slow_trends_and_the_retina_are_left_out() -> None:
    rng = np.random.default_rng(3)
    shape = (64, 96)
    ramp = np.linspace(-0.6, -0.2, shape[1])[None, :] * np.ones(shape)  # a tilt: a trend
    x = ramp + 0.05 * rng.standard_normal(shape)
    # A stripy band (the retina) in rows 20-39 is masked out, with the dilation margin.
    x[20:40] += _stripes((20, shape[1]), 0.3, 4.0, axis=1)
    retina = np.zeros((1, *shape), bool)
    retina[0, 22:38] = True  # two rows short of the band on each side: the margin covers them
    background = background_masks(retina, np.ones((1, *shape), bool), margin=2)[0]
    assert not background[20:40].any() and background[:20].all()
    column, row = stripe_energy(x, background)
    assert column < 1e-5 and row < 1e-5


def test_padding_is_ignored() -> None:
    rng = np.random.default_rng(4)
    x = _stripes(PLANE, 0.05, 4.0, axis=1) + 0.05 * rng.standard_normal(PLANE)
    alone = stripe_energy(x, np.ones(PLANE, bool))
    padded = np.full(PADDED, -1.0)
    padded[2:30, 4:44] = x
    inside = np.zeros(PADDED, bool)
    inside[2:30, 4:44] = True
    assert stripe_energy(padded, inside) == pytest.approx(alone, rel=1e-12)
    # Measured over the padding as well, the -1 border adds a jump the profile does not have.
    assert stripe_energy(padded, np.ones(PADDED, bool))[0] != pytest.approx(alone[0], rel=0.1)


def test_bad_settings_and_inputs_are_refused_with_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"margin=-1 must be an integer >= 0"):
        ArtefactSettings(margin=-1)
    with pytest.raises(ConfigError, match=r"max_period=2.0 must be above 2 pixels"):
        ArtefactSettings(max_period=2.0)
    with pytest.raises(ConfigError, match=r"min_pixels=1 must be at least 2"):
        ArtefactSettings(min_pixels=1)
    with pytest.raises(InputError, match=r"a background mask of its shape, got \(4, 5\) and"):
        stripe_energy(np.zeros((4, 5)), np.ones((5, 4), bool))


# --------------------------------------------------------------------------- an OCT cache


def _bscans(
    rng: np.random.Generator, n: int, stripes: float, layers: tuple[float, float]
) -> tuple[np.ndarray, ...]:
    """``n`` padded B-scans: a two-layer retina band (labels: one IRF cyst) in speckle."""
    images = np.full((n, *PADDED), -1.0, np.float32)
    masks = np.zeros((n, *PADDED), np.uint8)
    labels = np.zeros((n, *PADDED), np.uint8)
    xs = np.arange(PLANE[0])
    for k in range(n):
        x = -0.6 + 0.05 * rng.standard_normal(PLANE)
        x += _stripes(PLANE, stripes, 4.0, axis=0)  # along A-scans: the row energy
        top = (14 + 2 * np.cos(np.pi * xs / PLANE[0])).astype(int)  # a curved retina
        retina = np.zeros(PLANE, bool)
        for i, t in enumerate(top):
            retina[i, t : t + 12] = True
            x[i, t : t + 6], x[i, t + 6 : t + 12] = layers
        x[retina] += 0.05 * rng.standard_normal(int(retina.sum()))
        images[k, 2:30, 4:44] = np.clip(x, -1, 1)
        masks[k, 2:30, 4:44] = retina
        labels[k, 12:15, 4 + 17 : 4 + 19] = 1
    return images, masks, labels


@pytest.fixture(scope="module")
def oct_data(tiny_kit: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> EvalData:
    """A hand-made OCT cache: per site one training and one test subject of 3 B-scans; the
    target (B) background has stripes along A-scans, the source's has none."""
    rng = np.random.default_rng(0)
    sites, subjects = {}, []
    for site, stripes, layers in (("A", 0.0, (0.0, 0.3)), ("B", STRIPE, (0.1, 0.5))):
        images, masks, labels = _bscans(rng, 6, stripes, layers)
        first = len(subjects)
        slices = np.stack([first + np.arange(6) // 3, np.arange(6) % 3], 1).astype(np.int32)
        sites[site] = {"images": images, "labels": labels, "masks": masks, "slices": slices}
        for j, split in enumerate(("train", "test")):
            subjects.append({
                "subject": f"{site.lower()}{j}", "site": site, "image": f"/x/{site}{j}.nii.gz",
                "label": None, "split": split, "fold": 0, "shape": [*PLANE, 3], "n_slices": 3,
                "first_row": 3 * j,
            })  # fmt: skip
    root = tiny_kit.write_cache(
        tmp_path_factory.mktemp("oct") / "cache", sites, subjects, class_names=FLUID
    )
    manifest = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**manifest, "modality": "oct"}))
    return EvalData.from_cache(root)


def test_the_extent_comes_from_the_manifest_or_the_padding(oct_data: EvalData) -> None:
    assert cache_modality(oct_data.cache.manifest) == "oct"
    assert cache_modality({}) == "mri"
    inside = image_extent(oct_data, oct_data.source)
    expected = np.zeros(PADDED, bool)
    expected[2:30, 4:44] = True
    assert all(np.array_equal(m, expected) for m in inside)
    # Without the grid shape: the rows and columns not all -1 of each slice.
    entries = oct_data.cache.manifest["subjects"]
    saved = [e.pop("shape") for e in entries]
    try:
        assert np.array_equal(image_extent(oct_data, oct_data.target), inside)
    finally:
        for e, shape in zip(entries, saved, strict=True):
            e["shape"] = shape


def _by_hand(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, 2) energies of each slice's unpadded part, outside the retina dilated by 4."""
    out = []
    for x, m in zip(images[:, 2:30, 4:44], masks[:, 2:30, 4:44], strict=True):
        grown = np.zeros_like(m, dtype=bool)
        for i, j in zip(*np.nonzero(m), strict=True):
            grown[max(i - 4, 0) : i + 5, max(j - 4, 0) : j + 5] = True
        out.append(stripe_energy(x, ~grown))
    return np.asarray(out)


def test_the_lens_reports_each_method_against_the_target(oct_data: EvalData) -> None:
    source, target = oct_data.source, oct_data.target
    noisy = source.images.copy()
    inside = image_extent(oct_data, source)
    noisy[inside] += np.resize(_stripes(PLANE, 0.03, 4.0, axis=0).ravel(), noisy[inside].shape)
    lens = artefact_lens(oct_data, {"none": source.images, "striped": noisy})
    tgt = _by_hand(target.images, target.masks)
    assert lens["target"]["row_mean"] == pytest.approx(tgt[:, 1].mean(), rel=1e-9)
    assert lens["target"]["row_std"] == pytest.approx(tgt[:, 1].std(), rel=1e-9)
    assert lens["target"]["column_mean"] == pytest.approx(tgt[:, 0].mean(), rel=1e-9)
    assert lens["target"]["n_slices"] == 3
    # The target's stripes along A-scans, by hand: about STRIPE^2 / 2.
    assert lens["target"]["row_mean"] == pytest.approx(STRIPE**2 / 2, rel=0.15)
    for name, images in (("none", source.images), ("striped", noisy)):
        own = _by_hand(images, source.masks)
        scores = lens["methods"][name]
        assert scores["row_mean"] == pytest.approx(own[:, 1].mean(), rel=1e-9)
        assert scores["total_mean"] == pytest.approx(own.sum(axis=1).mean(), rel=1e-9)
        assert scores["row_ratio"] == pytest.approx(own[:, 1].mean() / tgt[:, 1].mean())
    assert lens["methods"]["none"]["row_ratio"] < 0.1
    assert lens["methods"]["striped"]["row_ratio"] == pytest.approx(0.03**2 / STRIPE**2, rel=0.2)
    assert not lens["methods"]["striped"]["blank_background"]
    # A translation kept inside the retina only (background -1) is flagged, not scored 0.
    cut = np.where(source.masks, source.images, -1.0)
    blank = artefact_lens(oct_data, {"cut": cut})["methods"]["cut"]
    assert blank["blank_background"] and np.isnan(blank["total_mean"])
    with pytest.raises(InputError, match=r"method 'bad': slices \(2, 32, 48\) do not match"):
        artefact_lens(oct_data, {"bad": source.images[:2]})


def test_classical_pipelines_run_on_oct_and_keep_the_background(oct_data: EvalData) -> None:
    out = baseline_slices(oct_data, BASELINES)
    assert list(out) == [n for n in BASELINES if not n.startswith("n4-")]
    assert set(omitted_baselines(oct_data)) == {"n4-histogram", "n4-denoise-histogram"}
    assert n4_corrected_baselines(oct_data, list(out)) == []
    source, retina = oct_data.source.images, oct_data.source.masks
    lens = artefact_lens(oct_data, out)
    for name, slices in out.items():
        assert np.array_equal(slices[~retina], source[~retina]), name
        assert _same_scores(lens["methods"][name], lens["methods"]["none"]), name
    # Inside the retina they did something: the histogram row sits on the target's quantiles.
    target_fg = oct_data.target.images[oct_data.target.masks]
    assert abs(source[retina].mean() - target_fg.mean()) > 0.1
    for name in ("histogram", "nyul", "zscore", "denoise-histogram"):
        assert out[name][retina].mean() == pytest.approx(target_fg.mean(), abs=0.02), name


def _same_scores(a: dict[str, float], b: dict[str, float]) -> bool:
    keys = [k for k in a if not k.endswith("_ratio")]
    return all(a[k] == b[k] for k in keys)


def test_a_translator_keeps_its_background_on_oct(oct_data: EvalData) -> None:
    import torch

    region = output_region(oct_data)
    assert np.array_equal(region, image_extent(oct_data, oct_data.source))
    images, masks = oct_data.source.images, oct_data.source.masks
    out = translator_slices(lambda x: torch.full_like(x, 0.25), images, masks, keep=region)
    assert np.all(out[region] == 0.25) and np.all(out[~region] == -1.0)
    assert np.all(translator_slices(lambda x: x * 0, images, masks)[~masks] == -1.0)
    with pytest.raises(InputError, match=r"keep \(2, 32, 48\) must have the masks' shape"):
        translator_slices(lambda x: x, images, masks, keep=region[:2])


def test_the_suite_adds_the_stage_on_oct_only(
    oct_data: EvalData, eval_study: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    for stage in ("_distribution", "_segmentation", "_robustness", "_conditioning"):
        monkeypatch.setattr(suite, stage, lambda *args, **kwargs: {})  # only the wiring here
    monkeypatch.setattr(suite.LesionLens, "for_data", classmethod(lambda cls, d, s: None))
    slices = {"none": oct_data.source.images}
    methods = {"none": suite.MethodInput(slices["none"])}
    results, _ = suite.run_evaluation(oct_data, methods)
    # As JSON: a ratio to a target energy of 0 is NaN, and NaN != NaN.
    same = json.dumps(artefact_lens(oct_data, slices), sort_keys=True)
    assert json.dumps(results["artefacts"], sort_keys=True) == same
    assert results["modality"] == "oct"
    assert results["omitted_baselines"] == omitted_baselines(oct_data)
    mri = EvalData.from_cache(eval_study.cache)
    plain, _ = suite.run_evaluation(mri, {"none": suite.MethodInput(mri.source.images)})
    assert not {"artefacts", "modality", "omitted_baselines"} & set(plain)


def test_an_mri_cache_keeps_its_rules(eval_study: SimpleNamespace) -> None:
    data = EvalData.from_cache(eval_study.cache)
    assert omitted_baselines(data) == {}
    assert np.array_equal(output_region(data), data.source.masks)
    out = baseline_slices(data, ["none", "zscore"])
    assert np.all(out["zscore"][~data.source.masks] == -1.0)
