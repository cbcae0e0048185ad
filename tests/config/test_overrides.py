"""The one ``section.field=value`` parser, on the run config and the evaluation settings."""

from __future__ import annotations

import pytest

from segrenorm.config.overrides import apply_overrides, override_tree, parse_override
from segrenorm.config.schema import AmpMode, Config
from segrenorm.errors import ConfigError
from segrenorm.evaluate.segmentors import SegmentorConfig
from segrenorm.evaluate.suite import EvaluationConfig


@pytest.mark.parametrize(
    ("text", "keys", "value"),
    [
        ("optim.iterations=12", ["optim", "iterations"], 12),
        (" optim.lr_gen =1e-3", ["optim", "lr_gen"], "1e-3"),
        ("data.fold=null", ["data", "fold"], None),
        ("loss.class_weights=[1, 2]", ["loss", "class_weights"], [1, 2]),
        ("sigmas=0,0.3", ["sigmas"], "0,0.3"),
        ("run.device=cuda:1", ["run", "device"], "cuda:1"),
        ("name=a: b: c", ["name"], "a: b: c"),  # not valid YAML: kept as text
    ],
)
def test_values_are_read_as_yaml(text: str, keys: list[str], value: object) -> None:
    assert parse_override(text) == (keys, value)


@pytest.mark.parametrize("text", ["optim.iterations", "=3", " =3"])
def test_malformed_overrides_are_rejected(text: str) -> None:
    with pytest.raises(ConfigError, match=r"must look like section\.field=value"):
        parse_override(text)


def test_tree_merges_over_a_copy() -> None:
    base = {"optim": {"iterations": 5}, "name": "mine"}
    tree = override_tree(["optim.lr_gen=0.1", "optim.iterations=6"], base)
    assert tree == {"optim": {"iterations": 6, "lr_gen": 0.1}, "name": "mine"}
    assert base == {"optim": {"iterations": 5}, "name": "mine"}
    with pytest.raises(ConfigError, match=r"'name\.x=1': name is not a section"):
        override_tree(["name.x=1"], base)


def test_run_config_overrides_are_typed() -> None:
    config = apply_overrides(Config(), ["run.amp=bf16", "run.compile=1", "data.fold=none"])
    assert config.run.amp is AmpMode.BF16 and config.run.compile is True
    assert config.data.fold is None
    assert apply_overrides(config, ["data.fold=2"]).data.fold == 2


def test_a_bare_off_is_the_amp_mode_not_a_boolean() -> None:
    # YAML 1.1 reads `off` as False; the enum field takes it back as the word.
    config = apply_overrides(Config(), ["run.amp=off"])
    assert config.run.amp is AmpMode.OFF
    assert apply_overrides(config, ["run.amp=auto"]).run.amp is AmpMode.AUTO
    with pytest.raises(ConfigError, match=r"run\.amp=True is unknown: choose one of auto, off"):
        apply_overrides(Config(), ["run.amp=on"])  # no `on` mode to map it to


def test_evaluation_settings() -> None:
    config = apply_overrides(
        EvaluationConfig(),
        ["autoencoder.iterations=7", "sigmas=0,0.3", "robustness_slices=0", "segmentor.lr=0.01"],
    )
    assert config.autoencoder.iterations == 7 and config.sigmas == (0.0, 0.3)
    assert config.robustness_slices == 0 and config.segmentor.lr == 0.01
    assert config.with_seed(3).segmentor.seed == 3
    weights = apply_overrides(EvaluationConfig(), ["segmentor.class_weights=[0.5,1,1,1]"])
    assert weights.segmentor.class_weights == (0.5, 1.0, 1.0, 1.0)
    whole = apply_overrides(EvaluationConfig(), ["autoencoder.crop_size=none"])
    assert whole.autoencoder.crop_size is None
    plain = apply_overrides(EvaluationConfig(), ["segmentor.foreground_crops=0"])
    assert plain.segmentor == SegmentorConfig(foreground_crops=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("autoencoder.depthh=2", r"unknown key\(s\) autoencoder\.depthh: known keys are"),
        ("sigmas", r"must look like section\.field=value"),
        ("kid_subsets=many", r"kid_subsets='many' must be an integer"),
        ("segmentor=3", r"segmentor names a section"),
        ("sigmas=0.5,0.1", r"must be increasing"),
        ("autoencoder.batch_size=3", r"batch_size=3 must be even"),
    ],
)
def test_bad_evaluation_settings_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(EvaluationConfig(), [override])
