"""Training loop: optimisers, schedules, AMP, logging, checkpoints, exact resume and DDP.

One iteration is a generator step (updating the segmentation nets, extractors and
generators), then a discriminator step on the same batch and the generator step's detached
fakes. Each loss is checked for NaN/Inf *before* its backward pass, so a diverged run stops
with the model in its last good state and ``last.pt`` untouched.

Example:
    >>> from segrenorm.config.schema import load_config
    >>> cfg = load_config("cpu", overrides=["optim.iterations=100"])
    >>> run_dir = train(cfg, "cache/", "runs/")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from segrenorm.config.schema import Config, OptimConfig
from segrenorm.errors import ConfigError, SegrenormError
from segrenorm.training.distributed import (
    DistContext,
    ForcedAbort,
    StopSignals,
    all_reduce_gradients,
    all_reduce_sum,
    autocast_dtype,
    barrier,
    broadcast_module,
    broadcast_object,
    init_distributed,
    shutdown_distributed,
)
from segrenorm.training.ema import WeightAverage
from segrenorm.training.runlog import (
    RunLog,
    create_run_dir,
    describe_cache,
    save_image_grid,
    translation_rows,
    write_run_record,
)
from segrenorm.training.step import StepRunner, keep_freed_memory

if TYPE_CHECKING:
    from segrenorm.data.datasets import SliceCache
    from segrenorm.models.translator import Translator

__all__ = [
    "Callback",
    "StepInfo",
    "TrainingDiverged",
    "TrainingInterrupted",
    "build_optimizers",
    "build_schedulers",
    "check_against_cache",
    "consistency_scale",
    "lr_factor",
    "train",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after each completed iteration.

    Args:
        step: completed iterations (1 after the first).
        total: the step this invocation stops at.
        losses: this iteration's loss terms, averaged over ranks.
        model: the translator being trained.
        rank: this process's rank.
        world_size: number of processes.
        run_dir: the run directory.
    """

    step: int
    total: int
    losses: Mapping[str, float]
    model: Translator
    rank: int
    world_size: int
    run_dir: Path


Callback = Callable[[StepInfo], None]


class TrainingDiverged(SegrenormError):
    """A loss became NaN or infinite; the run stopped without saving the poisoned state."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM stopped training after ``last.pt`` was saved.

    Args:
        message: what happened and how to resume.
        run_dir: the run directory.
        step: the step saved in ``last.pt``.
    """

    def __init__(self, message: str, run_dir: Path, step: int) -> None:
        super().__init__(message)
        self.run_dir = run_dir
        self.step = step


def lr_factor(optim: OptimConfig) -> Callable[[int], float]:
    """Learning-rate multiplier after ``step`` scheduler steps: 1, then linear to 0.

    Args:
        optim: supplies ``iterations`` (constant phase) and ``decay_iterations``.
    """
    constant, decay = optim.iterations, optim.decay_iterations

    # A plain function, not a callable object: LambdaLR then keeps it out of its
    # state_dict, so a resumed run follows the schedule of its current config.
    def factor(step: int) -> float:
        if step < constant or decay == 0:
            return 1.0
        return max(0.0, 1.0 - (step - constant) / decay)

    return factor


def consistency_scale(optim: OptimConfig, step: int) -> float:
    """Factor on the cycle and identity weights at ``step`` (see ``consistency_warmup``).

    Args:
        optim: supplies ``consistency_warmup``.
        step: completed iterations before this one.
    """
    if optim.consistency_warmup <= 0:
        return 1.0
    return min(1.0, (step + 1) / optim.consistency_warmup)


def build_optimizers(model: Translator, optim: OptimConfig) -> dict[str, torch.optim.Adam]:
    """One Adam per non-empty parameter group: ``seg``, ``gen`` and ``disc``.

    On CPU and CUDA they use torch's fused Adam kernel (the same update in one pass over
    each parameter; about 3x faster than the per-tensor loop on CPU).

    Args:
        model: the translator; :meth:`Translator.parameter_groups` names the groups.
        optim: learning rates and betas.
    """
    rates = {"seg": optim.lr_seg, "gen": optim.lr_gen, "disc": optim.lr_disc}
    groups = model.parameter_groups()
    unknown = sorted(set(groups) - set(rates))
    if unknown:
        raise ConfigError(f"the model reports unknown parameter group(s) {unknown}.")
    return {
        name: torch.optim.Adam(
            params,
            lr=rates[name],
            betas=(optim.beta1, optim.beta2),
            fused=all(p.device.type in ("cpu", "cuda") for p in params) or None,
        )
        for name, params in groups.items()
        if params
    }


def build_schedulers(
    optimizers: Mapping[str, torch.optim.Optimizer], optim: OptimConfig
) -> dict[str, torch.optim.lr_scheduler.LambdaLR]:
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` per optimiser following :func:`lr_factor`.

    Args:
        optimizers: optimisers by group name.
        optim: the schedule's lengths.
    """
    return {
        name: torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(optim))
        for name, opt in optimizers.items()
    }


def check_against_cache(config: Config, cache: SliceCache) -> None:
    """Raise :class:`ConfigError` when the config cannot train on ``cache``.

    Args:
        config: the run's config.
        cache: the opened slice cache.
    """
    data = config.data
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


def _first_bad(names: Sequence[str], values: Sequence[float]) -> tuple[str, float] | None:
    """The first non-finite loss, naming a term rather than a total when one is bad."""
    bad = [(n, v) for n, v in zip(names, values, strict=True) if not math.isfinite(v)]
    terms = [(n, v) for n, v in bad if not n.endswith("total")]
    return (terms or bad)[0] if bad else None


def train(
    config: Config,
    cache: str | Path,
    out: str | Path,
    *,
    resume: str | Path | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] | None = None,
    max_steps: int | None = None,
) -> Path:
    """Train a translator on a slice cache and return its run directory.

    Under ``torchrun`` every rank calls this; rank 0 alone writes files and all ranks
    return the same run directory.

    Args:
        config: the resolved run configuration.
        cache: folder written by ``segrenorm prepare``.
        out: parent of run directories; a new ``NNNNN-<name>-<translator>`` is made there
            unless ``resume`` points into an existing run, which is then continued.
        resume: a run directory (its ``checkpoints/last.pt``) or a checkpoint file. Weights,
            optimisers, schedules, RNG states and the data stream are restored, so training
            continues exactly. ``config.model`` and ``config.data`` must match the checkpoint.
        progress: show a tqdm bar (rank 0 only, and only when stderr is a terminal).
        callbacks: called with a :class:`StepInfo` after every iteration.
        max_steps: stop after this global step, keeping the schedule (resume later to go
            on); ``None`` runs the whole schedule.

    Raises:
        ConfigError: the config does not fit the cache or the checkpoint.
        CacheError: the cache is unusable.
        InputError: the resume path does not exist.
        CheckpointError: the resume checkpoint is unusable.
        TrainingDiverged: a loss became NaN or infinite.
        TrainingInterrupted: Ctrl-C / SIGTERM / a callback raised KeyboardInterrupt;
            ``last.pt`` holds the state after the last completed step.
    """
    config = config.validate()
    if max_steps is not None and max_steps < 1:
        raise ConfigError(f"max_steps={max_steps} must be >= 1 (or None for the whole schedule).")
    ctx = init_distributed(config.run.device)
    try:
        session = _Session(config, cache, out, ctx, resume)
        with StopSignals() as stop:
            session.run(stop, progress=progress, callbacks=callbacks or (), max_steps=max_steps)
        barrier(ctx)
        return session.run_dir
    finally:
        shutdown_distributed(ctx)


class _Session:
    """One rank's training state (model, optimisers, stream, run directory) and its loop."""

    def __init__(
        self,
        config: Config,
        cache: str | Path,
        out: str | Path,
        ctx: DistContext,
        resume: str | Path | None,
    ) -> None:
        from segrenorm.data.datasets import BatchStream, SliceCache, UnpairedSliceDataset
        from segrenorm.models.checkpoint import (
            check_resume_config,
            config_of,
            load_checkpoint,
            resolve_checkpoint,
            restore_training_state,
        )
        from segrenorm.models.translator import Translator

        self.config, self.ctx, self.device = config, ctx, ctx.device
        self.cache = SliceCache.open(cache)
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

    # -- one iteration ------------------------------------------------------------------

    def _reduce(self, values: Sequence[torch.Tensor]) -> list[float]:
        """Rank-averaged values as floats: one host sync; a NaN on any rank reaches all."""
        vec = torch.stack([v.detach().float().reshape(()) for v in values])
        if self.ctx.enabled:
            all_reduce_sum(vec, self.ctx).div_(self.ctx.world_size)
        return [float(v) for v in vec.tolist()]

    def _check_finite(self, names: Sequence[str], values: Sequence[float]) -> None:
        bad = _first_bad(names, values)
        if bad is None:
            return
        kept = (
            f"{self.run_dir / 'checkpoints' / 'last.pt'} (step {self.last_saved}) is the last "
            "good checkpoint"
            if self.last_saved is not None
            else "no checkpoint was saved yet"
        )
        raise TrainingDiverged(
            f"loss {bad[0]} became {bad[1]} at step {self.step + 1}; training stopped before "
            f"that update and {kept}. Lower the learning rates (--set optim.lr_gen=...) or set "
            "run.amp=off, then resume or start again."
        )

    def _step_groups(self, names: Sequence[str]) -> None:
        """Average the groups' gradients over ranks, then step their optimisers."""
        opts = [self.optimizers[n] for n in names if n in self.optimizers]
        params = [p for opt in opts for group in opt.param_groups for p in group["params"]]
        all_reduce_gradients(params, self.ctx)
        for opt in opts:
            self.scaler.step(opt)

    def iteration(self, stop: StopSignals) -> tuple[dict[str, float], dict[str, Any], bool]:
        """One generator and one discriminator update.

        Returns:
            The loss terms, the batch merged with the generator outputs (for images) and
            whether any rank asked to stop.
        """
        model = self.model
        model.train()
        model.set_film_enabled(self.step >= self.config.optim.warmup_iterations)
        model.consistency_scale = consistency_scale(self.config.optim, self.step)
        # A DataLoader draws its base seed from the global torch RNG at each epoch start;
        # forking keeps that draw out of training, so a resumed run sees the same numbers.
        with torch.random.fork_rng(devices=[]):
            try:
                batch = next(self.stream)
            except RuntimeError:
                if stop.requested:  # Ctrl-C also reached the DataLoader workers, which quit
                    raise KeyboardInterrupt from None
                raise
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        gen = self.runner.generator(batch)
        g_names = ["gen_total", *gen.terms]
        g_values = self._reduce([gen.total, *gen.terms.values()])
        self._check_finite(g_names, g_values)
        self.updating = True  # from here an interruption leaves a partly updated model
        self.runner.backward(gen, self.scaler.scale)
        self._step_groups(("seg", "gen"))
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        self.optimizers["disc"].zero_grad(set_to_none=True)
        disc = self.runner.discriminator(batch, gen.outputs)
        d_names = ["disc_total", *disc.terms]
        flag = torch.tensor(float(stop.requested), device=self.device)
        *d_values, stop_any = self._reduce([disc.total, *disc.terms.values(), flag])
        self._check_finite(d_names, d_values)
        self.runner.backward(disc, self.scaler.scale)
        self._step_groups(("disc",))
        self.scaler.update()
        # The rates this step used, logged before the schedule moves on.
        self.lr = {n: float(o.param_groups[0]["lr"]) for n, o in self.optimizers.items()}
        for sched in self.schedulers.values():
            sched.step()
        self.step += 1
        self.updating = False
        losses = dict(zip([*g_names, *d_names], [*g_values, *d_values], strict=True))
        return losses, {**batch, **gen.outputs}, stop_any > 0

    # -- files ------------------------------------------------------------------------------

    def _payload(self) -> dict[str, Any]:
        from segrenorm.models.checkpoint import build_checkpoint

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
        """Write ``last.pt`` (plus a step file or ``final.pt``) on rank 0; return ``last.pt``."""
        from segrenorm.models.checkpoint import save_checkpoint, save_rotating

        folder = self.run_dir / "checkpoints"
        if self.ctx.is_main:
            payload = self._payload()
            keep = self.config.run.keep_checkpoints if periodic else 0
            save_rotating(payload, folder, self.step, keep=keep)
            if final:
                save_checkpoint(payload, self.run_dir / "final.pt")
        self.last_saved = self.step
        return folder / "last.pt"

    def _log(self, started: float, bar: tqdm) -> None:
        count = max(int(self.window["count"]), 1)
        means = {k: v / count for k, v in self.window["sums"].items()}
        speed = count / max(time.perf_counter() - started, 1e-9)
        film = self.step - 1 >= self.config.optim.warmup_iterations
        self.runlog.log(self.step, means, self.lr, speed, film=film)
        bar.set_postfix({k: f"{means[k]:.3g}" for k in ("gen_total", "disc_total") if k in means})

    # -- the loop -------------------------------------------------------------------------

    def run(
        self,
        stop: StopSignals,
        *,
        progress: bool,
        callbacks: Sequence[Callback],
        max_steps: int | None,
    ) -> None:
        """Train from ``self.step`` to the end of the schedule (or ``max_steps``)."""
        total = self.config.optim.total_iterations
        end = min(total, max_steps) if max_steps is not None else total
        run_cfg = self.config.run
        show = progress and self.ctx.is_main and sys.stderr.isatty()
        bar = tqdm(total=end, initial=min(self.step, end), disable=not show, unit="it")
        (log.info if self.ctx.is_main else log.debug)(
            "training %s on %s: steps %d..%d -> %s",
            self.config.model.translator.value,
            self.device,
            self.step,
            end,
            self.run_dir,
        )
        started = time.perf_counter()
        try:
            while self.step < end:
                losses, images, stop_now = self.iteration(stop)
                for key, value in losses.items():
                    self.window["sums"][key] = self.window["sums"].get(key, 0.0) + value
                self.window["count"] += 1
                bar.update(1)
                if self.step % run_cfg.log_every == 0 or self.step == end:
                    self._log(started, bar)
                    self.window, started = {"sums": {}, "count": 0}, time.perf_counter()
                if run_cfg.image_every and self.step % run_cfg.image_every == 0:
                    self._images(images)
                if run_cfg.checkpoint_every and self.step % run_cfg.checkpoint_every == 0:
                    self.save(periodic=True)
                info = StepInfo(
                    self.step,
                    end,
                    losses,
                    self.model,
                    self.ctx.rank,
                    self.ctx.world_size,
                    self.run_dir,
                )
                for callback in callbacks:
                    callback(info)
                if stop_now:
                    raise KeyboardInterrupt
        except ForcedAbort:
            raise
        except KeyboardInterrupt:
            raise self._interrupted() from None
        finally:
            bar.close()
            self.runlog.close()
            self.stream.close()
            self.runner.close()
        if self.step >= end:
            self.save(final=True)
            log.info("finished at step %d: %s", self.step, self.run_dir / "final.pt")

    def _images(self, images: Mapping[str, torch.Tensor]) -> None:
        if self.ctx.is_main:
            path = self.run_dir / "images" / f"step-{self.step:06d}.png"
            title = f"{self.config.name} {self.config.model.translator.value} step {self.step}"
            rows = translation_rows(images, images)  # the batch merged with the outputs
            save_image_grid(path, rows, n_classes=self.config.data.n_classes, title=title)

    def _interrupted(self) -> TrainingInterrupted:
        if self.updating:  # a KeyboardInterrupt without our handler (e.g. not the main thread)
            log.warning("interrupted inside step %d: saving a partly updated state", self.step + 1)
        last = self.save()
        message = (
            f"interrupted at step {self.step}: saved {last}; resume with "
            f"`segrenorm train --resume {self.run_dir}`"
        )
        return TrainingInterrupted(message, self.run_dir, self.step)
