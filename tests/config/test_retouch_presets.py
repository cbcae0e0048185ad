"""The RETOUCH presets: the paper's ``retouch`` and ``retouch-cpu``, derived from ``cpu``."""

from __future__ import annotations

import dataclasses

import pytest

from segrenorm.config.load import load_config
from segrenorm.config.presets import PRESETS
from segrenorm.errors import ConfigError


def test_retouch_follows_the_paper() -> None:
    # Paper, Sec. III-B: RETOUCH crops 256 x 256, batch 2, four classes, weights 0.3/0.7.
    retouch = PRESETS["retouch"]
    assert load_config("retouch") == retouch
    assert (retouch.data.crop_size, retouch.data.batch_size, retouch.data.n_classes) == (256, 2, 4)
    assert retouch.loss.class_weights == (0.3, 0.7)
    # Two weights mean background, then every fluid class alike.
    assert retouch.loss.weights_for(4) == (0.3, 0.7, 0.7, 0.7)


def test_retouch_cpu_is_cpu_with_the_fluid_setting() -> None:
    cpu, small = PRESETS["cpu"], PRESETS["retouch-cpu"]
    assert small.name == "retouch-cpu" and load_config("retouch-cpu") == small
    assert (small.data.crop_size, small.data.batch_size, small.data.n_classes) == (96, 2, 4)
    assert small.loss.class_weights == PRESETS["retouch"].loss.class_weights == (0.3, 0.7)
    assert (small.optim.iterations, small.optim.total_iterations) == (2400, 3000)
    # Everything else is the cpu preset's: its networks, schedule shape and run settings.
    assert small.model == cpu.model
    assert small.run == cpu.run
    assert dataclasses.replace(small.optim, iterations=cpu.optim.iterations) == cpu.optim
    assert dataclasses.replace(small.loss, class_weights=cpu.loss.class_weights) == cpu.loss
    assert dataclasses.replace(small.data, crop_size=64, batch_size=4) == cpu.data
    # The same budget as the lesion setting's CPU preset, step for step.
    lesion = PRESETS["msseg-cpu"]
    assert (small.data.crop_size, small.data.batch_size) == (
        lesion.data.crop_size,
        lesion.data.batch_size,
    )
    assert small.optim.total_iterations == lesion.optim.total_iterations


def test_retouch_cpu_fits_the_demo_scale_bscan_and_costs_about_a_cpu_step() -> None:
    from segrenorm.simulate.oct_vendors import load_vendor

    small, cpu = PRESETS["retouch-cpu"], PRESETS["cpu"]
    # The CPU demo (simulate oct --scale 0.5): both vendors on the target's grid, whose
    # B-scans are the crop's frame. The crop must fit inside them and be a stride multiple.
    n_x, n_depth, _ = load_vendor("Spectralis").scaled(0.5).shape
    assert (n_x, n_depth) == (128, 248)
    assert small.data.crop_size <= min(n_x, n_depth)
    assert small.data.crop_size % small.model.stride == 0
    # At a quarter scale the B-scans (64 A-scans) would be narrower than the crop.
    assert load_vendor("Spectralis").scaled(0.25).shape[0] < small.data.crop_size
    pixels = small.data.batch_size * small.data.crop_size**2
    assert pixels / (cpu.data.batch_size * cpu.data.crop_size**2) == pytest.approx(1.125)


def test_retouch_cpu_takes_overrides_and_refuses_bad_ones() -> None:
    cfg = load_config("retouch-cpu", overrides=["data.fold=2", "optim.iterations=100"])
    assert cfg.data.fold == 2 and cfg.optim.total_iterations == 700
    with pytest.raises(ConfigError, match=r"data\.crop_size=90 is not divisible"):
        load_config("retouch-cpu", overrides=["data.crop_size=90"])
