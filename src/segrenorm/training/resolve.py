"""What a training invocation means: the config, the cache and the output folder.

A new run needs a config (a preset or YAML file), a cache and an output folder. A resumed
run (``--resume RUN_DIR_OR_CKPT``) takes each of them from its checkpoint unless given:
its own config (with ``--set`` overrides applied), the cache it was trained on and the
folder it already lives in.

Example:
    >>> plan = resolve_training(config="cpu", data="cache/", out="runs/")  # doctest: +SKIP
    >>> plan.config.name, plan.cache, plan.out  # doctest: +SKIP
    ('cpu', PosixPath('cache'), PosixPath('runs'))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from segrenorm.config.load import load_config
from segrenorm.config.overrides import apply_overrides
from segrenorm.config.schema import Config
from segrenorm.errors import ConfigError
from segrenorm.models.checkpoint import config_of, load_checkpoint, resolve_checkpoint
from segrenorm.vocabulary import POCKET_CLASS_NAMES, pocket_classes

if TYPE_CHECKING:
    from segrenorm.data.slice_cache import SliceCache

__all__ = ["SPARSE_LESION_FRACTION", "TrainingPlan", "resolve_training", "semgan_exclusion"]

#: A two-class cache whose foreground class covers less than this fraction of the foreground
#: (mask) voxels of its two sites is a sparse lesion cache, whatever its class is called.
#: MS lesions in FLAIR cover well under 1% of the brain; tissue or organ classes far more.
SPARSE_LESION_FRACTION = 0.02


def semgan_exclusion(cache: SliceCache) -> str | None:
    """Why SemGAN cannot train on ``cache`` (sparse lesion masks), or None if it can.

    A cache is a lesion cache when it has two classes and its class 1 is a pocket class
    (:func:`segrenorm.vocabulary.pocket_classes`: named ``lesion``, ``IRF``, ``SRF`` or
    ``PED``, any case), or its class 1 covers less than :data:`SPARSE_LESION_FRACTION` of the
    foreground voxels of the two sites shown (all splits). SemGAN's semantic dropout hides
    random classes from the generator's segmentation input; with one foreground class,
    dropping it leaves no semantic information, so the paper excludes SemGAN on MS-SEG. A
    cache of three or more classes keeps SemGAN, sparse or not: the paper runs it on
    RETOUCH's four (background, IRF, SRF, PED), where dropout always leaves a class.

    Args:
        cache: the opened cache (a pair view of a many-site cache: its two sites).

    Returns:
        The reason, worded as a ConfigError message, or None when SemGAN may train.
    """
    if cache.n_classes != 2:
        return None
    name = cache.class_names[1]
    lesion, inside = 0, 0
    for site in ("A", "B"):
        labels, masks = cache.labels(site), cache.masks(site)
        for start in range(0, cache.n_rows(site), 256):  # in chunks: the arrays are mapped
            mask = np.asarray(masks[start : start + 256]).astype(bool)
            lesion += int(np.count_nonzero(np.asarray(labels[start : start + 256])[mask]))
            inside += int(np.count_nonzero(mask))
    fraction = lesion / inside if inside else 0.0
    if pocket_classes(cache.class_names) != [1] and fraction >= SPARSE_LESION_FRACTION:
        return None
    named = "/".join(POCKET_CLASS_NAMES)
    return (
        f"model.translator=semgan is excluded on {cache.path}: its labels are sparse lesion "
        f"masks (2 classes, class 1 {name!r} covering {100 * fraction:.2f}% of the foreground "
        f"voxels; the rule: class 1 named {named} (any case), or under "
        f"{100 * SPARSE_LESION_FRACTION:g}%). "
        "SemGAN's semantic dropout hides random classes from its generator, and dropping the "
        "only foreground class leaves it no semantic information, so the paper excludes SemGAN "
        "on MS-SEG; use model.translator=segrenorm (or s-cyclegan, cyclegan) instead"
    )


@dataclass(frozen=True)
class TrainingPlan:
    """The resolved inputs of one training invocation.

    Args:
        config: the validated run config.
        cache: the slice cache folder.
        out: the folder holding run directories (for a resumed run, ignored by
            :func:`~segrenorm.training.trainer.train`: the run stays in its own folder).
        resume: the run directory or checkpoint to continue, or None for a new run.
    """

    config: Config
    cache: Path
    out: Path
    resume: str | Path | None = None


def resolve_training(
    *,
    config: str | Path | None = None,
    data: str | Path | None = None,
    out: str | Path | None = None,
    resume: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> TrainingPlan:
    """Resolve a training invocation's config, cache and output folder.

    Args:
        config: a preset name or YAML file; with ``resume``, defaults to the checkpoint's
            own config.
        data: the slice cache folder; with ``resume``, defaults to the cache the run used.
        out: the folder holding run directories; with ``resume``, defaults to the folder
            above the resumed path.
        resume: a run directory (its ``checkpoints/last.pt``) or a checkpoint file.
        overrides: ``section.field=value`` strings applied to the config.

    Raises:
        ConfigError: a required option is missing or a value is invalid.
        CheckpointError: ``resume`` names no readable checkpoint.
    """
    payload: dict[str, Any] | None = None
    ckpt: Path | None = None
    if resume:
        ckpt = resolve_checkpoint(resume)
        payload = load_checkpoint(ckpt)
    if config:
        resolved = load_config(config, overrides=overrides)
    elif payload is not None and ckpt is not None:
        resolved = apply_overrides(config_of(payload, source=ckpt), overrides).validate()
    else:
        raise ConfigError(
            "--config is required (a preset or a YAML file) unless --resume is given."
        )
    cache = data or (payload["cache_info"].get("path") if payload is not None else None)
    if not cache:
        raise ConfigError("--data is required (the slice cache folder) unless --resume is given.")
    if not out and payload is None:
        raise ConfigError("--out is required: the folder that will hold the run directory.")
    folder = Path(out) if out else Path(str(resume)).parent
    return TrainingPlan(resolved, Path(cache), folder, resume or None)
