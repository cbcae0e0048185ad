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

from segrenorm.data.slicing import SliceRecipe
from segrenorm.errors import ConfigError
from segrenorm.harmonize.batching import (
    AUTO_BATCH,
    FIXED_BATCH,
    BatchChoice,
    parse_batch_size,
    resolve_batch,
)
from segrenorm.harmonize.fusion import BatchCallback, TranslateFn, parse_views, translate_view
from segrenorm.harmonize.policy import apply_dtype, obliquity_notes, resample_onto, to_training_grid
from segrenorm.harmonize.records import (
    HarmonizeResult,
    PreparedVolume,
    ViewModel,
    check_prepared_alike,
    load_view_model,
)
from segrenorm.models.tiling import inference_tile, parse_tiles, tiled_translation
from segrenorm.vocabulary import SLICE_AXES, check_direction
from segrenorm.volumes.images import ScalarImage
from segrenorm.volumes.readwrite import load_image
from segrenorm.volumes.spatial import round_up

__all__ = [
    "BACKGROUNDS",
    "HarmonizeOptions",
    "HarmonizeResult",
    "HarmonizeWarning",
    "Harmonizer",
    "PreparedVolume",
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
        batch_size: slices per forward pass, or ``"auto"`` (the default): the fastest for
            the model and slice size within a memory cap, timed once per process (see
            :mod:`~segrenorm.harmonize.batching`); 16 with ``torch.compile``.
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
    batch_size: int | str = AUTO_BATCH
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
        object.__setattr__(self, "batch_size", parse_batch_size(self.batch_size, "batch size"))
        if isinstance(self.seg_batch, bool) or self.seg_batch < 1:
            raise ConfigError(f"seg_batch {self.seg_batch} must be at least 1")
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
        check_prepared_alike(self.models)
        self.compiled = compile
        #: The slice batch used for each padded slice shape met so far.
        self.batch_choices: dict[tuple[int, int], BatchChoice] = {}
        self._translate: dict[str, TranslateFn] = {}
        for view, model in self.models.items():
            self._translate[view] = self._translation(model, compile)

    def _translation(self, model: ViewModel, compile: bool) -> TranslateFn:
        from segrenorm.models.inference import ConditionedGenerator, channels_last_call

        module = ConditionedGenerator(
            model.translator, self.options.direction, seg_chunk=self.options.seg_batch
        ).eval()
        tile = self.tile_of(model)
        run: TranslateFn = module
        if self.device.type == "cpu" and not compile:
            run = channels_last_call(module)  # faster on CPU (BENCHMARKS.md, issue 14)
        if compile:
            # Static shapes: one compilation per view's slice (or tile) size; batches are padded.
            run = torch.compile(module, dynamic=False)
        stride = model.translator.stride
        batch = self.options.batch_size
        tiles_per_pass = batch if isinstance(batch, int) else FIXED_BATCH
        return tiled_translation(run, tile, sw_batch_size=tiles_per_pass, stride=stride)

    def batch_for(self, shape: tuple[int, int]) -> BatchChoice:
        """The slice batch for padded slices of ``shape`` (``auto``: timed once a process).

        Args:
            shape: the first view's padded slice shape (H, W).

        Returns:
            The choice, also kept in :attr:`batch_choices` for the run's notes.
        """
        model, opts = self.models[self.views[0]], self.options
        key = (str(model.source), opts.direction, opts.seg_batch, self.tile_of(model))
        choice = resolve_batch(
            opts.batch_size, key, self._translate[self.views[0]], shape, compiled=self.compiled,
            channels=model.translator.context_slices, width=model.config.model.ngf,
            device=self.device,
        )  # fmt: skip
        self.batch_choices[shape] = choice
        return choice

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

        The same as :meth:`prepare`, :meth:`translate` and :meth:`finish` in turn (the
        steps a folder overlaps across files).

        Args:
            volume: a loaded :class:`ScalarImage` or a path.
            on_batch: progress callback (slices done, slices in the current view).
            site: the volume's site name, when known (see :meth:`harmonize`).

        Raises:
            InputError: unreadable, not 3D, or spacing far from the training data.
        """
        prepared = self.prepare(volume, site=site)
        return self.finish(prepared, self.translate(prepared, on_batch=on_batch))

    def prepare(
        self, volume: ScalarImage | str | Path, *, site: str | None = None
    ) -> PreparedVolume:
        """Read a volume and bring it to the model's grid and scale (steps 1-3), no model run.

        Args:
            volume: a loaded :class:`ScalarImage` or a path.
            site: the volume's site name, when known (see :meth:`harmonize`).

        Raises:
            InputError: unreadable, not 3D, or spacing far from the training data.
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
            canonical, where, spacing=facts.spacing, tolerance=opts.spacing_tolerance,
            max_ratio=opts.max_spacing_ratio, interpolation=recipe.interpolation,
        )  # fmt: skip
        notes += spacing_note
        # The training's bias correction (if any), fitted on the grid translated.
        scaled, mask, _scaling = recipe.scale(work.data, spacing=work.geometry.spacing)
        seconds = time.perf_counter() - start
        return PreparedVolume(image, canonical, work, scaled, mask, list(notes), where, seconds)

    def translate(
        self, prepared: PreparedVolume, *, on_batch: BatchCallback | None = None
    ) -> np.ndarray:
        """Translate a prepared volume along every view and fuse (step 4, target units).

        Args:
            prepared: what :meth:`prepare` returned.
            on_batch: progress callback (slices done, slices in the current view).

        Returns:
            The fused (X, Y, Z) float32 volume on the training grid, in the target's units.
        """
        start = time.perf_counter()
        scaled, opts = prepared.scaled, self.options
        first = self.models[self.views[0]]
        _, height, width = np.moveaxis(scaled, SLICE_AXES[self.views[0]], 0).shape
        stride = first.translator.stride
        batch = self.batch_for((round_up(height, stride), round_up(width, stride))).batch
        fused = np.zeros(scaled.shape, dtype=np.float32)
        for view, model in self.models.items():
            translated = translate_view(
                self._translate[view], scaled, view, stride=model.translator.stride,
                batch_size=batch, foreground=prepared.mask, device=self.device,
                on_batch=on_batch, fixed_batch=self.compiled,
                context=model.translator.context_slices,
            )  # fmt: skip
            fused += model.facts.target_scaling(opts.direction).invert(translated)
        fused /= len(self.models)
        prepared.seconds += time.perf_counter() - start
        return fused

    def finish(self, prepared: PreparedVolume, fused: np.ndarray) -> HarmonizeResult:
        """Put a translated volume back on the input's grid, background and type (steps 5-6).

        Args:
            prepared: what :meth:`prepare` returned.
            fused: what :meth:`translate` returned for it (modified in place).

        Returns:
            The harmonized volume, its notes and the time of all three steps.
        """
        start = time.perf_counter()
        facts, opts, image = self.primary.facts, self.options, prepared.image
        recipe = SliceRecipe.from_facts(facts)
        work, canonical, mask = prepared.work, prepared.canonical, prepared.mask
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
            data, image.geometry, prepared.where, dtype=opts.dtype, target_name=self.target_name
        )
        notes = (*prepared.notes, *dtype_note)
        out = ScalarImage(data=data, geometry=geometry, path=None)
        seconds = prepared.seconds + time.perf_counter() - start
        n_slices = sum(int(prepared.scaled.shape[SLICE_AXES[v]]) for v in self.views)
        return HarmonizeResult(out, notes, self.views, n_slices, seconds)
