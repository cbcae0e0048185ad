"""The MS-SEG presets: the paper's ``msseg`` and ``msseg-cpu``, derived from ``cpu``."""

from __future__ import annotations

import dataclasses

import pytest

from segrenorm.config.load import load_config
from segrenorm.config.presets import PRESETS
from segrenorm.errors import ConfigError


def test_msseg_follows_the_paper() -> None:
    # Paper, Sec. III-B: MS-SEG crops 256 x 256, batch 2, background/foreground weights 0.2/0.8.
    msseg = PRESETS["msseg"]
    assert (msseg.data.crop_size, msseg.data.batch_size, msseg.data.n_classes) == (256, 2, 2)
    assert msseg.loss.class_weights == (0.2, 0.8)
    assert (msseg.loss.gan, msseg.loss.cycle) == (1.0, 10.0)
    o = msseg.optim
    assert (o.lr_seg, o.lr_gen, o.lr_disc, o.beta1, o.beta2) == (2e-4, 2e-4, 1e-4, 0.5, 0.999)


def test_msseg_cpu_is_cpu_with_the_lesion_setting() -> None:
    cpu, small = PRESETS["cpu"], PRESETS["msseg-cpu"]
    assert small.name == "msseg-cpu" and load_config("msseg-cpu") == small
    assert (small.data.crop_size, small.data.batch_size, small.data.n_classes) == (96, 2, 2)
    assert small.loss.class_weights == PRESETS["msseg"].loss.class_weights == (0.2, 0.8)
    assert (small.optim.iterations, small.optim.total_iterations) == (2400, 3000)
    # Everything else is the cpu preset's: its networks, schedule shape and run settings.
    assert small.model == cpu.model
    assert small.run == cpu.run
    same_optim = dataclasses.replace(small.optim, iterations=cpu.optim.iterations)
    assert same_optim == cpu.optim
    assert dataclasses.replace(small.loss, class_weights=cpu.loss.class_weights) == cpu.loss
    assert dataclasses.replace(small.data, crop_size=64, batch_size=4, n_classes=4) == cpu.data


def test_msseg_cpu_fits_a_2mm_flair_slice_and_costs_about_a_cpu_step() -> None:
    small, cpu = PRESETS["msseg-cpu"], PRESETS["cpu"]
    # A 2 mm MNI slice is padded to 112 x 128 in the cache; the crop fits and is a stride multiple.
    assert small.data.crop_size <= 112 and small.data.crop_size % small.model.stride == 0
    pixels = small.data.batch_size * small.data.crop_size**2
    assert pixels / (cpu.data.batch_size * cpu.data.crop_size**2) == pytest.approx(1.125)


def test_msseg_cpu_takes_overrides_and_refuses_bad_ones() -> None:
    cfg = load_config("msseg-cpu", overrides=["data.fold=3", "model.translator=cyclegan"])
    assert cfg.data.fold == 3 and cfg.model.translator.value == "cyclegan"
    with pytest.raises(ConfigError, match=r"data\.crop_size=90 is not divisible"):
        load_config("msseg-cpu", overrides=["data.crop_size=90"])
