"""Harmonize whole volumes with a trained translator: the in-memory API behind the command.

Each volume goes through the steps the training slices went through, then back:

1. **Orientation.** Reoriented to RAS+ (axis flips and permutations only: lossless), so
   plane names mean what they meant in training. Oblique volumes (a voxel axis more than
   ``oblique_warn_deg`` from every world axis) are processed with a warning: the slice
   planes then only approximate the training planes.
2. **Spacing.** The model was trained on one physical grid (its cache's spacing). If the
   voxel size along any axis differs from it by more than ``spacing_tolerance`` (relative,
   5% by default), the volume is resampled (linear) to the grid along all three axes,
   translated, and resampled back onto its own grid, with a warning; within the tolerance on
   every axis it is translated as it is. This is ``prepare``'s rule (only its tolerance is
   0.1%), for 2D and 2.5-D models alike: a 1x1x2 mm volume given to a model of a 1 mm cache
   is translated on 1 mm slices, as ``prepare`` cut such a volume for training. A ratio beyond
   ``max_spacing_ratio`` along any axis (e.g. a header in metres, or a 0.1 mm microscopy grid)
   is refused: that is not the data the model knows. OCT models resample with nearest
   neighbour both ways (the paper's rule; it keeps the speckle statistics).
3. **Intensity.** Bias-corrected inside the foreground exactly as the training volumes were
   (the checkpoint's :class:`~segrenorm.volumes.bias.BiasCorrection`, N4 by default: there is
   no option to differ), then scaled to ``[-1, 1]`` from the volume's own foreground
   percentiles (the percentiles and masking of the training cache); background -1 (OCT: the
   retina is the foreground, and the background keeps its scaled intensities).
4. **Translation.** ``G(x | S(x))`` slice batch by slice batch along each view (one by
   default: the training plane; ``views`` fuses several by averaging), whole slices by
   default. ``tiles="auto"`` instead translates a model trained on crops in overlapping
   tiles of its crop size, blended with a Gaussian window (see
   :func:`~segrenorm.models.tiling.inference_tile`); on the validation split of both
   built-in pairs that tied on SSIM and lost 0.3-0.5 dB PSNR against the clean truth
   (BENCHMARKS.md), so whole slices are the default.
5. **Back to the target scanner.** Outputs are mapped from ``[-1, 1]`` with the *target*
   site's typical scale (median foreground percentiles of its training subjects), so they
   are in the target scanner's units. Voxels outside the input's foreground mask are set to
   the background value: 0 (``background="zero"``, the default: air) or the target's low
   intensity (``"low"``, what the model saw as -1). OCT keeps the translated background:
   artefacts a translator paints there must stay measurable.
6. **Geometry and dtype.** The array is put back in the input's voxel order and carries the
   input's affine and header (display window reset). It is float32 by default
   (``dtype="float32"``); ``dtype="input"`` keeps the input's on-disk type, rounding and
   clipping to its range (warning when clipping happens), or name a type (``"int16"``).

Example:
    >>> harmonizer = Harmonizer.load("runs/00000-ixi-segrenorm")  # doctest: +SKIP
    >>> image = harmonizer.harmonize("sub-01_T1w.nii.gz")  # doctest: +SKIP
    >>> save_image(image.data, "out.nii.gz", geometry=image.geometry)  # doctest: +SKIP
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segrenorm.config.schema import Config
from segrenorm.data.facts import TrainingFacts
from segrenorm.data.slicing import SliceRecipe
from segrenorm.errors import ConfigError
from segrenorm.harmonize.fusion import BatchCallback, TranslateFn, parse_views, translate_view
from segrenorm.harmonize.policy import (
    apply_dtype,
    obliquity_notes,
    resample_onto,
    to_training_grid,
)
from segrenorm.models.tiling import inference_tile, parse_tiles, tiled_translation
from segrenorm.models.translator import Translator
from segrenorm.vocabulary import SLICE_AXES, check_direction
from segrenorm.volumes.images import ScalarImage
from segrenorm.volumes.readwrite import load_image

__all__ = [
    "BACKGROUNDS",
    "HarmonizeOptions",
    "HarmonizeResult",
    "HarmonizeWarning",
    "Harmonizer",
    "ViewModel",
    "load_view_model",
]

BACKGROUNDS = ("zero", "low")
_SAVE_TYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")


class HarmonizeWarning(UserWarning):
    """A volume was harmonized, but not as it came (resampled, oblique, clipped)."""


@dataclass(frozen=True)
class HarmonizeOptions:
    """How volumes are harmonized (see the module docstring for the policies).

    Args:
        direction: ``"AB"`` (the model's G: its training source -> target) or ``"BA"``.
        batch_size: slices per forward pass; bounds memory.
        seg_batch: slices per pass of the segmentation net inside a batch: it runs at full
            resolution and dominates peak memory (ixi at batch 16: 1.46 -> 1.06 GB with 4).
        dtype: ``"float32"``, ``"input"`` (keep the input's on-disk type) or a type name.
        background: value outside the foreground: ``"zero"`` or ``"low"`` (target's low);
            OCT models keep the translated background instead.
        spacing_tolerance: relative voxel-size difference from the model's grid tolerated
            on every axis without resampling (see the module docstring).
        max_spacing_ratio: spacing ratio (either way, along any axis) beyond which a volume
            is refused.
        oblique_warn_deg: obliquity (degrees) beyond which a warning is given.
        tiles: ``"none"`` (whole slices, the default), ``"auto"`` (tiles of the training
            crop size when the model trained on crops, whole slices when it trained on
            whole slices) or a tile side in pixels (a multiple of the model's stride).
    """

    direction: str = "AB"
    batch_size: int = 16
    seg_batch: int = 4
    dtype: str = "float32"
    background: str = "zero"
    spacing_tolerance: float = 0.05
    max_spacing_ratio: float = 8.0
    oblique_warn_deg: float = 20.0
    tiles: str | int = "none"

    def __post_init__(self) -> None:
        check_direction(self.direction)
        object.__setattr__(self, "tiles", parse_tiles(self.tiles))
        if self.batch_size < 1 or self.seg_batch < 1:
            raise ConfigError(
                f"batch size {self.batch_size} and seg_batch {self.seg_batch} must be at least 1"
            )
        if self.dtype not in ("input", *_SAVE_TYPES):
            raise ConfigError(
                f"output dtype {self.dtype!r} is unknown: use input or one of "
                f"{', '.join(_SAVE_TYPES)}"
            )
        if self.background not in BACKGROUNDS:
            raise ConfigError(
                f"background {self.background!r} is unknown: use {' or '.join(BACKGROUNDS)}"
            )
        if not 0 <= self.spacing_tolerance < 1 or not self.max_spacing_ratio > 1:
            raise ConfigError(
                f"spacing_tolerance {self.spacing_tolerance} must be in [0, 1) and "
                f"max_spacing_ratio {self.max_spacing_ratio} above 1"
            )


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


class Harmonizer:
    """Harmonize volumes with one model (any views) or one model per view.

    Args:
        models: the model of each view, in fusion order (see :meth:`load`).
        options: harmonization options.
        device: where the models live.
        compile: wrap each view's conditioned generator in ``torch.compile`` (opt-in).
    """

    def __init__(
        self,
        models: Mapping[str, ViewModel],
        options: HarmonizeOptions | None = None,
        *,
        device: str | torch.device = "cpu",
        compile: bool = False,
    ) -> None:
        if not models:
            raise ConfigError("a Harmonizer needs at least one view model")
        parse_views(list(models), "axial")
        self.models = dict(models)
        self.options = options or HarmonizeOptions()
        self.device = torch.device(device)
        first = self.primary
        for view, model in self.models.items():
            same = (model.facts.percentiles, model.facts.use_mask, model.facts.modality)
            if same != (first.facts.percentiles, first.facts.use_mask, first.facts.modality):
                raise ConfigError(
                    f"{model.source} ({view}) scaled its {model.facts.modality} training slices "
                    f"with percentiles {model.facts.percentiles} and mask={model.facts.use_mask}"
                    f", but {first.source} its {first.facts.modality} slices with "
                    f"{first.facts.percentiles} and mask={first.facts.use_mask}: fuse only "
                    "models prepared the same way"
                )
            bias, first_bias = model.facts.bias_correction, first.facts.bias_correction
            if bias != first_bias and (bias.enabled or first_bias.enabled):
                raise ConfigError(
                    f"{model.source} ({view}) was trained on volumes bias-corrected with "
                    f"{bias.to_dict()}, but {first.source} with {first_bias.to_dict()}: fuse "
                    "only models prepared the same way"
                )
        self.compiled = compile
        self._translate: dict[str, TranslateFn] = {}
        for view, model in self.models.items():
            self._translate[view] = self._translation(model, compile)

    def _translation(self, model: ViewModel, compile: bool) -> TranslateFn:
        from segrenorm.models.inference import ConditionedGenerator

        module = ConditionedGenerator(
            model.translator, self.options.direction, seg_chunk=self.options.seg_batch
        ).eval()
        tile = self.tile_of(model)
        run: TranslateFn = module
        if compile:
            # Static shapes: one compilation per view's slice (or tile) size; batches are padded.
            run = torch.compile(module, dynamic=False)
        stride = model.translator.stride
        return tiled_translation(run, tile, sw_batch_size=self.options.batch_size, stride=stride)

    def tile_of(self, model: ViewModel) -> int | None:
        """The tile side of ``model`` by ``options.tiles`` (None: whole slices; a slice no
        larger than the tile is translated whole). Raises ConfigError off the stride."""
        return inference_tile(model.config, None, self.options.tiles)

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        views: str | Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        compile: bool = False,
        **options: Any,
    ) -> Harmonizer:
        """Load one model and apply it along ``views`` (default: its training plane).

        Args:
            path: a run directory or checkpoint.
            views: planes to translate along and fuse, e.g. ``"axial,coronal,sagittal"``.
            device: ``"cpu"``, ``"cuda"``, ...
            compile: use ``torch.compile``.
            options: fields of :class:`HarmonizeOptions` (``direction``, ``batch_size``, ...).
        """
        model = load_view_model(path, device)
        chosen = parse_views(views, model.facts.slice_axis)
        return cls(
            {v: model for v in chosen},
            HarmonizeOptions(**options),
            device=device,
            compile=compile,
        )

    @classmethod
    def load_per_view(
        cls,
        paths: Mapping[str, str | Path],
        *,
        device: str | torch.device = "cpu",
        compile: bool = False,
        **options: Any,
    ) -> Harmonizer:
        """Load one model per view, e.g. ``{"axial": run1, "coronal": run2}``; fuse them.

        Args:
            paths: plane name -> run directory or checkpoint.
            device: where the models go.
            compile: use ``torch.compile``.
            options: fields of :class:`HarmonizeOptions`.
        """
        parse_views(list(paths), "axial")
        loaded: dict[str, ViewModel] = {}
        for view, path in paths.items():
            loaded[view] = load_view_model(path, device)
        return cls(loaded, HarmonizeOptions(**options), device=device, compile=compile)

    @property
    def primary(self) -> ViewModel:
        """The first view's model: its training grid and target scale are the reference."""
        return next(iter(self.models.values()))

    @property
    def views(self) -> tuple[str, ...]:
        """The planes translated, in fusion order."""
        return tuple(self.models)

    @property
    def target_name(self) -> str:
        """Name of the site volumes are harmonized to."""
        return self.primary.facts.target_name(self.options.direction)

    def harmonize(
        self, volume: ScalarImage | str | Path, *, site: str | None = None
    ) -> ScalarImage:
        """Harmonize one volume and return it in memory, on the input's grid.

        Warnings (resampling, obliquity, clipping, a site the model never saw) are issued as
        :class:`HarmonizeWarning`.

        Args:
            volume: a loaded :class:`ScalarImage` or a path to a 3D volume.
            site: the volume's site name, when known; one other than the model's source
                site is translated with a warning.

        Raises:
            InputError: unreadable, not 3D, or spacing far from the training data.
        """
        result = self.run(volume, site=site)
        for note in result.notes:
            warnings.warn(note, HarmonizeWarning, stacklevel=2)
        return result.image

    def run(
        self,
        volume: ScalarImage | str | Path,
        *,
        on_batch: BatchCallback | None = None,
        site: str | None = None,
    ) -> HarmonizeResult:
        """Harmonize one volume, returning it with notes instead of issuing warnings.

        Args:
            volume: a loaded :class:`ScalarImage` or a path.
            on_batch: progress callback (slices done, slices in the current view).
            site: the volume's site name, when known (see :meth:`harmonize`).
        """
        start = time.perf_counter()
        image = volume if isinstance(volume, ScalarImage) else load_image(volume)
        where = str(image.path) if image.path is not None else "the volume"
        notes = self.primary.facts.site_notes(
            site, self.options.direction, model=self.primary.source
        )
        facts, opts = self.primary.facts, self.options
        recipe = SliceRecipe.from_facts(facts)
        canonical = recipe.orient(image)  # RAS+ (MRI) or the stored voxel order (OCT)
        notes += obliquity_notes(
            image.geometry, where, max_deg=opts.oblique_warn_deg, plane=facts.slice_axis
        )
        work, spacing_note = to_training_grid(
            canonical,
            where,
            spacing=facts.spacing,
            tolerance=opts.spacing_tolerance,
            max_ratio=opts.max_spacing_ratio,
            interpolation=recipe.interpolation,
        )
        notes += spacing_note
        # The training's bias correction (if any), fitted on the grid translated.
        scaled, mask, _scaling = recipe.scale(work.data, spacing=work.geometry.spacing)
        fused = np.zeros(work.data.shape, dtype=np.float32)
        n_slices = 0
        for view, model in self.models.items():
            translated = translate_view(
                self._translate[view],
                scaled,
                view,
                stride=model.translator.stride,
                batch_size=opts.batch_size,
                foreground=mask,
                device=self.device,
                on_batch=on_batch,
                fixed_batch=self.compiled,
                context=model.translator.context_slices,
            )
            fused += model.facts.target_scaling(opts.direction).invert(translated)
            n_slices += int(scaled.shape[SLICE_AXES[view]])
        fused /= len(self.models)
        if work is not canonical:
            # OCT goes back with nearest neighbour, as it came (the paper's rule: a linear
            # resampling would average speckle and change its statistics).
            fused = resample_onto(
                fused, work.geometry, canonical.geometry, interpolation=recipe.interpolation
            )
            mask = None if recipe.is_oct else recipe.mask(canonical.data)
        target = facts.target_scaling(opts.direction)
        if mask is not None and not recipe.is_oct:  # OCT keeps its (translated) background
            fused[~mask] = 0.0 if opts.background == "zero" else target.low
        data = recipe.unorient(fused, image.geometry).astype(np.float32, copy=False)
        data, geometry, dtype_note = apply_dtype(
            data, image.geometry, where, dtype=opts.dtype, target_name=self.target_name
        )
        notes += dtype_note
        out = ScalarImage(data=data, geometry=geometry, path=None)
        seconds = time.perf_counter() - start
        return HarmonizeResult(out, tuple(notes), self.views, n_slices, seconds)
