"""One rank's training state: model, optimisers, schedules, data stream and run directory.

:class:`TrainingSession` builds everything a run needs from its config, restores a
checkpoint's state when resuming, and writes the run's files (``config.json``,
checkpoints, image grids). :func:`segrenorm.training.trainer.train` runs the loop that
advances it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from segrenorm.atomic import remove_stale_temporaries
from segrenorm.config.schema import Config, TranslatorKind
from segrenorm.errors import ConfigError
from segrenorm.training.distributed import (
    DistContext,
    autocast_dtype,
    broadcast_module,
    broadcast_object,
)
from segrenorm.training.ema import WeightAverage
from segrenorm.training.images import save_image_grid, translation_rows
from segrenorm.training.optim import build_optimizers, build_schedulers
from segrenorm.training.resolve import semgan_exclusion
from segrenorm.training.runlog import RunLog, create_run_dir, describe_cache, write_run_record
from segrenorm.training.state import (
    build_checkpoint,
    check_resume_config,
    restore_training_state,
    save_checkpoint,
    save_rotating,
)
from segrenorm.training.step import StepRunner, keep_freed_memory

if TYPE_CHECKING:
    from segrenorm.data.slice_cache import SliceCache

__all__ = ["TrainingSession", "check_against_cache"]


def check_against_cache(config: Config, cache: SliceCache) -> None:
    """Raise :class:`ConfigError` when the config cannot train on ``cache``.

    Args:
        config: the run's config.
        cache: the opened slice cache.
    """
    data = config.data
    if config.model.translator is TranslatorKind.SEMGAN and (why := semgan_exclusion(cache)):
        raise ConfigError(why)
    if data.n_classes != cache.n_classes:
        raise ConfigError(
            f"data.n_classes={data.n_classes} but the cache {cache.path} has "
            f"n_classes={cache.n_classes}: use --set data.n_classes={cache.n_classes} "
            "or a cache prepared with the same classes."
        )
    h, w = cache.slice_shape
    if data.crop_size > min(h, w):
        stride = config.model.stride
        fit = (min(h, w) // stride) * stride
        raise ConfigError(
            f"data.crop_size={data.crop_size} is larger than the cache's slices {h}x{w} "
            f"({cache.path}): use --set data.crop_size={fit} or smaller"
            + (f" (a multiple of the stride {stride})." if fit else ".")
        )
    if data.crop_size == 0 and (h % config.model.stride or w % config.model.stride):
        raise ConfigError(
            f"data.crop_size=0 trains on whole slices, but the cache's slices {h}x{w} "
            f"({cache.path}) are not multiples of the network's stride {config.model.stride}: "
            f"prepare the cache with --pad-multiple {config.model.stride} or use crops"
        )


class TrainingSession:
    """One rank's training state and the files it writes; the loop lives in the trainer.

    Building a session seeds the RNGs, opens the cache, builds the translator, optimisers,
    schedules, gradient scaler, weight average and batch stream, restores them from the
    resume checkpoint when one is given, and opens (or creates) the run directory.

    Args:
        config: the validated run configuration.
        cache: folder written by ``segrenorm prepare``.
        out: parent of run directories (a new one is made unless resuming a run).
        ctx: this process's distributed context.
        resume: a run directory or checkpoint to continue, or None.

    Raises:
        ConfigError: the config does not fit the cache or the checkpoint.
        CacheError: the cache is unusable.
        InputError: the resume path does not exist.
        CheckpointError: the resume checkpoint is unusable.
    """

    def __init__(
        self,
        config: Config,
        cache: str | Path,
        out: str | Path,
        ctx: DistContext,
        resume: str | Path | None,
    ) -> None:
        from segrenorm.data.batches import BatchStream
        from segrenorm.data.datasets import UnpairedSliceDataset
        from segrenorm.data.slice_cache import SliceCache
        from segrenorm.models.checkpoint import config_of, load_checkpoint, resolve_checkpoint
        from segrenorm.models.translator import Translator

        self.config, self.ctx, self.device = config, ctx, ctx.device
        # Channels-last on CPU only: measured there (BENCHMARKS.md); GPUs are unmeasured.
        self.channels_last = config.run.channels_last and self.device.type == "cpu"
        self.cache = SliceCache.open(cache, pair=(config.data.source, config.data.target))
        check_against_cache(config, self.cache)
        self.cache_info = describe_cache(self.cache)
        payload: dict[str, Any] | None = None
        ckpt = resolve_checkpoint(resume) if resume is not None else None
        if ckpt is not None:
            payload = load_checkpoint(ckpt)
            check_resume_config(config, config_of(payload, source=ckpt), ckpt)
        random.seed(config.run.seed)
        np.random.seed(config.run.seed)  # noqa: NPY002 - seeds code using the global RNG
        torch.manual_seed(config.run.seed)
        self.model = Translator.from_config(config).to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        broadcast_module(self.model, ctx)
        self.optimizers = build_optimizers(self.model, config.optim)
        decay = config.optim.ema_decay
        self.ema = WeightAverage(self.model, decay) if decay > 0 else None
        self.schedulers = build_schedulers(self.optimizers, config.optim)
        self.amp = autocast_dtype(config.run.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp is torch.float16)
        d = config.data
        dataset = UnpairedSliceDataset(
            self.cache,
            split="train",
            fold=d.fold,
            crop_size=d.crop_size,
            foreground_bias=d.foreground_bias,
            semantic_dropout=d.semantic_dropout,
            seed=config.run.seed,
            direction=d.direction,
            context_slices=d.context_slices,
        )
        self.stream = BatchStream(
            dataset,
            batch_size=d.batch_size,
            num_workers=d.num_workers,
            seed=config.run.seed,
            rank=ctx.rank,
            world_size=ctx.world_size,
            pin_memory=self.device.type == "cuda",
        )
        self.step = 0
        self.updating = False
        self.lr: dict[str, float] = {}
        self.last_saved: int | None = None
        self.window: dict[str, Any] = {"sums": {}, "count": 0}  # loss sums since the last log
        if payload is not None and ckpt is not None:
            self.step = self.last_saved = restore_training_state(
                payload,
                ckpt,
                model=self.model,
                optimizers=self.optimizers,
                schedulers=self.schedulers,
                scaler=self.scaler,
                stream=self.stream,
                ema=self.ema,
            )
            self.window = dict(payload.get("extra", {}).get("log_window", self.window))
            if self.ema is not None and "ema" not in payload:  # averaging starts on resume
                self.ema = WeightAverage(self.model, config.optim.ema_decay)
        if config.run.compile:
            for net in self.model.children():
                net.compile()  # in place, so state_dict keys keep their names
        self.run_dir = self._open_run_dir(out, ckpt)
        self.runlog = RunLog(self.run_dir, enabled=ctx.is_main)
        if payload is not None:
            self.runlog.truncate_after(self.step)
            if ctx.is_main:  # partial checkpoints, grids or records of a killed process
                for folder in (self.run_dir, self.run_dir / "checkpoints", self.run_dir / "images"):
                    remove_stale_temporaries(folder)
        if self.device.type == "cpu":
            keep_freed_memory()  # no page faults re-acquiring each iteration's activations
        self.runner = StepRunner(
            self.model,
            device=self.device,
            amp=self.amp,
            # Compiled graphs are not built from two threads at once.
            parallel=config.run.parallel_directions and not config.run.compile,
        )

    def _open_run_dir(self, out: str | Path, ckpt: Path | None) -> Path:
        """Continue the run owning ``ckpt``, or (on rank 0) create a numbered one."""
        run_dir: str | None = None
        if ckpt is not None:  # RUN/checkpoints/*.pt or RUN/final.pt: continue RUN
            owner = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
            run_dir = str(owner) if (owner / "config.json").is_file() else None
        if run_dir is None and self.ctx.is_main:
            kind = self.config.model.translator.value
            if self.config.data.source is not None or self.config.data.target is not None:
                source, target = self.cache.site_names  # a chosen pair shows in the name
                kind += f"-{source}-to-{target}"
            run_dir = str(create_run_dir(out, self.config.name, kind))
        path = Path(broadcast_object(run_dir, self.ctx))
        if self.ctx.is_main:
            amp = str(self.amp).removeprefix("torch.") if self.amp is not None else "off"
            extra = {"device": str(self.device), "amp": amp, "world_size": self.ctx.world_size}
            write_run_record(
                path,
                config=self.config.to_dict(),
                cache_info=self.cache_info,
                extra=extra,
                resumed_from=ckpt,
                step=self.step,
            )
        return path

    def payload(self) -> dict[str, Any]:
        """The checkpoint dict of the current state (see :func:`build_checkpoint`)."""
        return build_checkpoint(
            config=self.config,
            cache_info=self.cache_info,
            model=self.model,
            optimizers=self.optimizers,
            schedulers=self.schedulers,
            step=self.step,
            data_stream=self.stream.state_dict(),
            scaler=self.scaler,
            ema=self.ema.state_dict() if self.ema is not None else None,
            extra={"log_window": self.window},
        )

    def save(self, *, periodic: bool = False, final: bool = False) -> Path:
        """Write ``last.pt`` (plus a step file or ``final.pt``) on rank 0; return ``last.pt``.

        Args:
            periodic: also keep ``step-XXXXXXX.pt`` (``run.keep_checkpoints`` of them).
            final: also write ``final.pt`` beside the checkpoints folder.
        """
        folder = self.run_dir / "checkpoints"
        if self.ctx.is_main:
            payload = self.payload()
            keep = self.config.run.keep_checkpoints if periodic else 0
            save_rotating(payload, folder, self.step, keep=keep)
            if final:
                save_checkpoint(payload, self.run_dir / "final.pt")
        self.last_saved = self.step
        return folder / "last.pt"

    def save_images(self, images: Mapping[str, torch.Tensor]) -> None:
        """Write this step's translation grid (rank 0 only).

        Args:
            images: the batch merged with the generator step's outputs.
        """
        if self.ctx.is_main:
            path = self.run_dir / "images" / f"step-{self.step:06d}.png"
            title = f"{self.config.name} {self.config.model.translator.value} step {self.step}"
            rows = translation_rows(images, images)  # the batch merged with the outputs
            save_image_grid(path, rows, n_classes=self.config.data.n_classes, title=title)
