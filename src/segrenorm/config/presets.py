"""Named configurations: the paper's dataset settings and laptop-CPU presets.

Each preset is a validated :class:`~segrenorm.config.schema.Config`; ``segrenorm train --config
NAME`` uses one, and a YAML file can start from one with ``preset: NAME``.
"""

from __future__ import annotations

from typing import Any

from segrenorm.config.build import config_from_dict
from segrenorm.config.schema import Config

__all__ = ["PRESETS"]


def _preset(name: str, **sections: Any) -> Config:
    return config_from_dict({"name": name, **sections})


def _variant(base: Config, name: str, **sections: dict[str, Any]) -> Config:
    """``base`` renamed, with the given fields of its sections replaced."""
    raw = base.to_dict()
    for section, values in sections.items():
        raw[section] = {**raw[section], **values}
    return config_from_dict({**raw, "name": name})


PRESETS: dict[str, Config] = {
    # Paper settings for IXI (T1, 4 tissue classes).
    "ixi": _preset(
        "ixi",
        model={"ngf": 64, "ndf": 64},
        data={"crop_size": 128, "batch_size": 4, "n_classes": 4},
        loss={"class_weights": [0.5, 0.5]},
    ),
    # Paper settings for MS-SEG (FLAIR, 2 classes: background, lesion): 256 x 256 crops,
    # batch 2, the sparse lesion class weighed up (0.2/0.8). SemGAN is excluded on its caches.
    "msseg": _preset(
        "msseg",
        model={"ngf": 64, "ndf": 64},
        data={"crop_size": 256, "batch_size": 2, "n_classes": 2},
        loss={"class_weights": [0.2, 0.8]},
    ),
    # Paper settings for RETOUCH OCT (4 classes: background, IRF, SRF, PED): 256 x 256 crops,
    # batch 2, the sparse fluid classes weighed up (0.3/0.7).
    "retouch": _preset(
        "retouch",
        model={"ngf": 64, "ndf": 64},
        data={"crop_size": 256, "batch_size": 2, "n_classes": 4},
        loss={"class_weights": [0.3, 0.7]},
    ),
    # A laptop-CPU first try on the built-in 2 mm benchmark: about 9 minutes on 2 cores.
    # Tuned for that budget (BENCHMARKS.md): a moving average of the weights stabilises the
    # short adversarial run; the cycle weight is eased in over 600 steps so the
    # identity-started generators leave the identity sooner; the discriminators learn at the
    # generators' rate. No identity loss: chosen on the validation split of both built-in
    # pairs (1.5T->3T: a tie with weight 5; 1T->7T: weight 5 keeps G at the identity).
    "cpu": _preset(
        "cpu",
        model={
            "ngf": 16,
            "ndf": 32,
            "n_downsample": 2,
            "n_middle_blocks": 2,
            "seg_ngf": 8,
            "seg_depth": 2,
            "embed_dim": 64,
            "extractor_grid": 2,
        },
        data={"crop_size": 64, "batch_size": 4, "n_classes": 4},
        loss={"identity": 0.0},
        optim={
            "iterations": 1800,
            "decay_iterations": 600,
            "lr_disc": 2e-4,
            "consistency_warmup": 600,
            "ema_decay": 0.99,
        },
        run={"log_every": 25, "image_every": 600, "checkpoint_every": 300, "keep_checkpoints": 10},
    ),
}

# The lesion setting on a laptop CPU: the cpu preset with msseg's classes and weights, at 2 mm
# (FLAIR slices of 112 x 128). Crops of 96 cover most of a slice, as the paper's 256 crops do at
# 1 mm, and with msseg's batch 2 a step costs about what a cpu step does (2 x 96^2 pixels
# against 4 x 64^2: 1.13x; 1.09x measured in a 40-step timing run of each on 2 cores, both
# under the same load). The cpu preset's 2400 steps took 0.18-0.24 s each on an idle 2-core
# machine (BENCHMARKS.md), so 3000 steps, the same 600-step decay, cycle warm-up and weight
# average, take about 10-13 minutes: about 15 minutes with evaluation.
PRESETS["msseg-cpu"] = _variant(
    PRESETS["cpu"],
    "msseg-cpu",
    data={"crop_size": 96, "batch_size": 2, "n_classes": 2},
    loss={"class_weights": [0.2, 0.8]},
    optim={"iterations": 2400},
)

# The fluid setting on a laptop CPU: the cpu preset with retouch's classes and weights, for
# `simulate oct --scale 0.5`. There both vendors share the target (Spectralis-like) grid of
# 0.047 x 0.008 mm in the B-scan plane: B-scans of 128 x 248 pixels, padded to 128 x 256. Crops
# of 96 (4.5 mm wide, 0.77 mm deep; the retina about 0.3 mm) hold most of the retina of a
# B-scan, and with retouch's batch 2 a step costs about what an msseg-cpu step does (2 x 96^2
# pixels against cpu's 4 x 64^2: 1.13x). Measured on 2 cores (BENCHMARKS.md): about 0.15 s a
# step, so 2400 + 600 steps take about 8 minutes; evaluating it takes about 10 more (the
# fluid segmentors' 400 steps dominate).
PRESETS["retouch-cpu"] = _variant(
    PRESETS["cpu"],
    "retouch-cpu",
    data={"crop_size": 96, "batch_size": 2, "n_classes": 4},
    loss={"class_weights": [0.3, 0.7]},
    optim={"iterations": 2400},
)
