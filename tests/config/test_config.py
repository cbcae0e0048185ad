from __future__ import annotations

from pathlib import Path

import pytest

from segrenorm.config.build import config_from_dict
from segrenorm.config.load import load_config
from segrenorm.config.presets import PRESETS
from segrenorm.config.schema import AmpMode, Config, TranslatorKind
from segrenorm.errors import ConfigError


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_dict(name: str) -> None:
    cfg = PRESETS[name]
    assert config_from_dict(cfg.to_dict()) == cfg


def test_paper_presets_match_the_paper() -> None:
    ixi, msseg, retouch = PRESETS["ixi"], PRESETS["msseg"], PRESETS["retouch"]
    assert (ixi.data.crop_size, ixi.data.batch_size, ixi.data.n_classes) == (128, 4, 4)
    assert ixi.loss.class_weights == (0.5, 0.5)
    assert (ixi.model.ngf, ixi.model.ndf) == (64, 64)
    assert (msseg.data.crop_size, msseg.data.batch_size, msseg.data.n_classes) == (256, 2, 2)
    assert msseg.loss.class_weights == (0.2, 0.8)
    assert (retouch.data.crop_size, retouch.data.n_classes) == (256, 4)
    assert retouch.loss.class_weights == (0.3, 0.7)
    for cfg in (ixi, msseg, retouch):
        assert (cfg.loss.gan, cfg.loss.cycle) == (1.0, 10.0)
        assert (cfg.optim.lr_seg, cfg.optim.lr_gen, cfg.optim.lr_disc) == (2e-4, 2e-4, 1e-4)
        assert (cfg.optim.beta1, cfg.optim.beta2) == (0.5, 0.999)


def test_overrides_are_typed() -> None:
    cfg = load_config(
        "cpu",
        overrides=["optim.iterations=12", "model.translator=cyclegan", "run.amp=bf16"],
    )
    assert cfg.optim.iterations == 12
    assert cfg.model.translator is TranslatorKind.CYCLEGAN
    assert cfg.run.amp is AmpMode.BF16


def test_yaml_file_starts_from_named_preset(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("preset: ixi\noptim:\n  iterations: 7\nloss:\n  class_weights: [1, 2, 2, 2]\n")
    cfg = load_config(path)
    assert cfg.name == "mine"
    assert cfg.optim.iterations == 7
    assert cfg.model.ngf == 64
    assert cfg.loss.weights_for(4) == (1.0, 2.0, 2.0, 2.0)


def test_two_class_weights_broadcast_to_foreground() -> None:
    assert PRESETS["retouch"].loss.weights_for(4) == (0.3, 0.7, 0.7, 0.7)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.translator=pix2pix"], r"model.translator='pix2pix' is unknown: choose one of"),
        (["data.crop_size=100"], r"data.crop_size=100 is not divisible by the network's stride 16"),
        (["data.crop_size=-16"], r"data.crop_size=-16 must be 0 \(whole slices\) or a positive"),
        (["model.ngf=0"], r"model.ngf=0 must be > 0"),
        (["model.bogus=3"], r"unknown key\(s\) model.bogus"),
        (["data.n_classes=abc"], r"data.n_classes='abc' must be an integer"),
        (["data.foreground_bias=1.5"], r"data.foreground_bias=1.5 must lie in \[0, 1\]"),
        (["data.semantic_dropout=0.5"], r"only applies to the semgan translator"),
        (["loss.class_weights=[1, 2, 3]"], r"class_weights has 3 values but the data has 4"),
        (["run.device=tpu"], r"run.device='tpu' is unknown"),
        (["data.direction=XY"], r"data\.direction 'XY' is unknown: use 'AB'"),
        (["optim.iterations"], r"must look like section.field=value"),
    ],
)
def test_bad_values_are_rejected_with_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config("ixi", overrides=overrides)


def test_crop_size_zero_means_whole_slices() -> None:
    assert load_config("cpu", overrides=["data.crop_size=0"]).data.crop_size == 0


def test_unknown_preset_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown preset 'ixii'"):
        load_config("ixii")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: nothere\n")
    with pytest.raises(ConfigError, match="unknown preset 'nothere'"):
        load_config(bad)


def test_config_is_frozen() -> None:
    cfg = Config()
    with pytest.raises(AttributeError):
        cfg.name = "x"  # type: ignore[misc]


def test_fold_is_optional_int() -> None:
    assert load_config("cpu").data.fold is None
    assert load_config("cpu", overrides=["data.fold=3"]).data.fold == 3
    assert load_config("cpu", overrides=["data.fold=null"]).data.fold is None
    with pytest.raises(ConfigError, match=r"data.fold=-1 is out of range"):
        load_config("cpu", overrides=["data.fold=-1"])


@pytest.mark.parametrize(("zero", "std"), [(True, 0.0), (False, 0.16)])
def test_configs_from_before_the_conditioning_fix_rebuild_the_old_architecture(
    zero: bool, std: float
) -> None:
    # segrenorm 0.1.0 wrote model.zero_init_film; its extractor had N(0, 0.02) weights and no
    # embedding normalisation, which loading its weights needs again.
    old = config_from_dict({"name": "old", "model": {"zero_init_film": zero, "embed_dim": 64}})
    assert old.model.extractor_init.value == "normal" and old.model.embed_norm is False
    assert old.model.film_init_std == pytest.approx(std)  # 0.02 * sqrt(64) for N(0, 0.02) heads
    new = config_from_dict({"name": "new", "model": {"embed_dim": 64}})
    assert new.model.extractor_init.value == "kaiming" and new.model.embed_norm is True
    with pytest.raises(ConfigError, match="zero_init_films"):
        config_from_dict({"model": {"zero_init_films": True}})
