"""What a :class:`~segrenorm.harmonize.harmonizer.Harmonizer` holds and hands on.

A :class:`ViewModel` is a trained translator loaded with the facts of its training; a
:class:`PreparedVolume` is a volume read and scaled for it, between the harmonizer's
``prepare`` and ``translate`` steps (a folder reads the next file while one is translated);
a :class:`HarmonizeResult` is the harmonized volume with its notes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from segrenorm.config.schema import Config
from segrenorm.data.facts import TrainingFacts
from segrenorm.errors import ConfigError
from segrenorm.models.translator import Translator
from segrenorm.volumes.images import ScalarImage

__all__ = [
    "HarmonizeResult",
    "PreparedVolume",
    "ViewModel",
    "check_prepared_alike",
    "load_view_model",
]


@dataclass(frozen=True)
class ViewModel:
    """A trained translator with what harmonization needs to know about its training.

    Args:
        translator: the networks, in eval mode.
        config: the run's configuration.
        facts: how its training slices were made.
        source: the checkpoint file.
    """

    translator: Translator
    config: Config
    facts: TrainingFacts
    source: Path


def load_view_model(path: str | Path, device: str | torch.device = "cpu") -> ViewModel:
    """Load a run directory or checkpoint for harmonization.

    Args:
        path: a run directory (``final.pt`` preferred) or a ``.pt`` checkpoint.
        device: where the networks go.

    Raises:
        InputError: the path does not exist.
        CheckpointError: the checkpoint is truncated, corrupt, from another format version,
            or lacks what harmonization needs.
    """
    from segrenorm.models.checkpoint import load_checkpoint, load_translator, resolve_checkpoint

    file = resolve_checkpoint(path, prefer=("final.pt", "last.pt"))
    facts = TrainingFacts.from_checkpoint(load_checkpoint(file), file)
    translator, config = load_translator(file, device)
    return ViewModel(translator=translator, config=config, facts=facts, source=file)


@dataclass(frozen=True)
class HarmonizeResult:
    """A harmonized volume and what happened on the way.

    Args:
        image: the harmonized volume on the input's grid (float32 data).
        notes: warnings raised for this volume (resampling, obliquity, clipping).
        views: the planes translated.
        n_slices: slices along all views (those without foreground are not translated).
        seconds: wall time.
    """

    image: ScalarImage
    notes: tuple[str, ...]
    views: tuple[str, ...]
    n_slices: int
    seconds: float


@dataclass
class PreparedVolume:
    """A volume read and brought to the model's grid and scale, not yet translated.

    Args:
        image: the volume as read.
        canonical: it in the training's voxel order (RAS+ for MRI).
        work: ``canonical`` on the training grid (``canonical`` itself within tolerance).
        scaled: (X, Y, Z) float32 ``work`` scaled to [-1, 1].
        mask: its foreground (None: every slice is translated).
        notes: warnings so far (site, obliquity, resampling).
        where: the volume's name in messages.
        seconds: wall time spent on it so far.
    """

    image: ScalarImage
    canonical: ScalarImage
    work: ScalarImage
    scaled: np.ndarray
    mask: np.ndarray | None
    notes: list[str]
    where: str
    seconds: float


def check_prepared_alike(models: Mapping[str, ViewModel]) -> None:
    """Refuse to fuse models whose training volumes were scaled or bias-corrected differently.

    Args:
        models: view -> model, the first the reference.

    Raises:
        ConfigError: a model prepared otherwise than the first (the message names both).
    """
    first = next(iter(models.values()))
    for view, model in models.items():
        facts, ref = model.facts, first.facts
        same = (facts.percentiles, facts.headroom, facts.use_mask, facts.modality)
        if same != (ref.percentiles, ref.headroom, ref.use_mask, ref.modality):
            raise ConfigError(
                f"{model.source} ({view}) scaled its {facts.modality} training slices "
                f"with percentiles {facts.percentiles}, headroom {facts.headroom:g} and "
                f"mask={facts.use_mask}, but {first.source} its {ref.modality} slices with "
                f"{ref.percentiles}, headroom {ref.headroom:g} and mask={ref.use_mask}: fuse "
                "only models prepared the same way"
            )
        bias, first_bias = model.facts.bias_correction, first.facts.bias_correction
        if bias != first_bias and (bias.enabled or first_bias.enabled):
            raise ConfigError(
                f"{model.source} ({view}) was trained on volumes bias-corrected with "
                f"{bias.to_dict()}, but {first.source} with {first_bias.to_dict()}: fuse "
                "only models prepared the same way"
            )
