"""Training: :func:`train`, its loop, and what it reports (steps, divergence, interrupts).

One iteration is a generator step (updating the segmentation nets, extractors and
generators), then a discriminator step on the same batch and the generator step's detached
fakes. Each loss is checked for NaN/Inf *before* its backward pass, so a diverged run stops
with the model in its last good state and ``last.pt`` untouched.

Example:
    >>> from segrenorm.config.load import load_config
    >>> cfg = load_config("cpu", overrides=["optim.iterations=100"])
    >>> run_dir = train(cfg, "cache/", "runs/")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from segrenorm.config.schema import Config, TranslatorKind
from segrenorm.errors import ConfigError, SegrenormError
from segrenorm.models.conditioning import conditioning_sensitivity
from segrenorm.training.distributed import (
    ForcedAbort,
    StopSignals,
    all_reduce_gradients,
    all_reduce_sum,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from segrenorm.training.optim import consistency_scale
from segrenorm.training.session import TrainingSession

if TYPE_CHECKING:
    from segrenorm.models.translator import Translator

__all__ = [
    "Callback",
    "StepInfo",
    "TrainingDiverged",
    "TrainingInterrupted",
    "train",
]

log = logging.getLogger(__name__)

#: SemGAN is S-CycleGAN plus semantic dropout: without dropout the two train the same model.
SEMGAN_WITHOUT_DROPOUT = (
    "model.translator=semgan with data.semantic_dropout=0 trains exactly S-CycleGAN: set "
    "--set data.semantic_dropout=0.5 (what `segrenorm compare` uses) or train s-cyclegan"
)


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
    if config.model.translator is TranslatorKind.SEMGAN and config.data.semantic_dropout == 0:
        warnings.warn(SEMGAN_WITHOUT_DROPOUT, UserWarning, stacklevel=2)
    ctx = init_distributed(config.run.device)
    try:
        session = TrainingSession(config, cache, out, ctx, resume)
        with StopSignals() as stop:
            _run(session, stop, progress=progress, callbacks=callbacks or (), max_steps=max_steps)
        barrier(ctx)
        return session.run_dir
    finally:
        shutdown_distributed(ctx)


# -- the loop: it advances a TrainingSession, one iteration at a time ----------------------


def _reduce(session: TrainingSession, values: Sequence[torch.Tensor]) -> list[float]:
    """Rank-averaged values as floats: one host sync; a NaN on any rank reaches all."""
    vec = torch.stack([v.detach().float().reshape(()) for v in values])
    if session.ctx.enabled:
        all_reduce_sum(vec, session.ctx).div_(session.ctx.world_size)
    return [float(v) for v in vec.tolist()]


def _check_finite(session: TrainingSession, names: Sequence[str], values: Sequence[float]) -> None:
    bad = _first_bad(names, values)
    if bad is None:
        return
    kept = (
        f"{session.run_dir / 'checkpoints' / 'last.pt'} (step {session.last_saved}) is the last "
        "good checkpoint"
        if session.last_saved is not None
        else "no checkpoint was saved yet"
    )
    raise TrainingDiverged(
        f"loss {bad[0]} became {bad[1]} at step {session.step + 1}; training stopped before "
        f"that update and {kept}. Lower the learning rates (--set optim.lr_gen=...) or set "
        "run.amp=off, then resume or start again."
    )


def _step_groups(session: TrainingSession, names: Sequence[str]) -> None:
    """Average the groups' gradients over ranks, then step their optimisers."""
    opts = [session.optimizers[n] for n in names if n in session.optimizers]
    params = [p for opt in opts for group in opt.param_groups for p in group["params"]]
    all_reduce_gradients(params, session.ctx)
    for opt in opts:
        session.scaler.step(opt)


def _iteration(
    session: TrainingSession, stop: StopSignals
) -> tuple[dict[str, float], dict[str, Any], bool]:
    """One generator and one discriminator update.

    Returns:
        The loss terms, the batch merged with the generator outputs (for images) and
        whether any rank asked to stop.
    """
    model = session.model
    model.train()
    model.set_film_enabled(session.step >= session.config.optim.warmup_iterations)
    model.consistency_scale = consistency_scale(session.config.optim, session.step)
    # A DataLoader draws its base seed from the global torch RNG at each epoch start;
    # forking keeps that draw out of training, so a resumed run sees the same numbers.
    with torch.random.fork_rng(devices=[]):
        try:
            batch = next(session.stream)
        except RuntimeError:
            if stop.requested:  # Ctrl-C also reached the DataLoader workers, which quit
                raise KeyboardInterrupt from None
            raise
    batch = {k: v.to(session.device, non_blocking=True) for k, v in batch.items()}
    if session.channels_last:  # images (B, k, h, w); label maps (B, h, w) stay as they are
        batch = {
            k: v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v
            for k, v in batch.items()
        }
    for opt in session.optimizers.values():
        opt.zero_grad(set_to_none=True)
    gen = session.runner.generator(batch)
    g_names = ["gen_total", *gen.terms]
    g_values = _reduce(session, [gen.total, *gen.terms.values()])
    _check_finite(session, g_names, g_values)
    session.updating = True  # from here an interruption leaves a partly updated model
    session.runner.backward(gen, session.scaler.scale)
    _step_groups(session, ("seg", "gen"))
    if session.ema is not None:
        session.ema.update(session.model, session.step)
    session.optimizers["disc"].zero_grad(set_to_none=True)
    disc = session.runner.discriminator(batch, gen.outputs)
    d_names = ["disc_total", *disc.terms]
    flag = torch.tensor(float(stop.requested), device=session.device)
    *d_values, stop_any = _reduce(session, [disc.total, *disc.terms.values(), flag])
    _check_finite(session, d_names, d_values)
    session.runner.backward(disc, session.scaler.scale)
    _step_groups(session, ("disc",))
    session.scaler.update()
    # The rates this step used, logged before the schedule moves on.
    session.lr = {n: float(o.param_groups[0]["lr"]) for n, o in session.optimizers.items()}
    for sched in session.schedulers.values():
        sched.step()
    session.step += 1
    session.updating = False
    losses = dict(zip([*g_names, *d_names], [*g_values, *d_values], strict=True))
    return losses, {**batch, **gen.outputs}, stop_any > 0


def _conditioning(model: Translator, batch: Mapping[str, Any]) -> dict[str, float | None] | None:
    """The conditioning sensitivity of both directions on the logged batch (segrenorm only)."""
    if not model.kind.renormalizes or batch["a"].shape[0] < 2:
        return None
    figures = {}
    for direction, side in (("AB", "a"), ("BA", "b")):
        figure = conditioning_sensitivity(model, batch[side], batch[f"{side}_mask"], direction)
        figures[direction] = None if figure is None else figure["sensitivity"]
    return figures


def _log(session: TrainingSession, started: float, bar: tqdm, batch: Mapping[str, Any]) -> None:
    count = max(int(session.window["count"]), 1)
    means = {k: v / count for k, v in session.window["sums"].items()}
    speed = count / max(time.perf_counter() - started, 1e-9)
    film = session.step - 1 >= session.config.optim.warmup_iterations
    extra: dict[str, Any] = {"film": film}
    if session.runlog.enabled:  # one segmentation and two generator passes per direction
        extra["conditioning"] = _conditioning(session.model, batch)
    session.runlog.log(session.step, means, session.lr, speed, **extra)
    bar.set_postfix({k: f"{means[k]:.3g}" for k in ("gen_total", "disc_total") if k in means})


def _run(
    session: TrainingSession,
    stop: StopSignals,
    *,
    progress: bool,
    callbacks: Sequence[Callback],
    max_steps: int | None,
) -> None:
    """Train from ``session.step`` to the end of the schedule (or ``max_steps``)."""
    total = session.config.optim.total_iterations
    end = min(total, max_steps) if max_steps is not None else total
    run_cfg = session.config.run
    show = progress and session.ctx.is_main and sys.stderr.isatty()
    bar = tqdm(total=end, initial=min(session.step, end), disable=not show, unit="it")
    (log.info if session.ctx.is_main else log.debug)(
        "training %s on %s: steps %d..%d -> %s",
        session.config.model.translator.value,
        session.device,
        session.step,
        end,
        session.run_dir,
    )
    started = time.perf_counter()
    try:
        while session.step < end:
            losses, images, stop_now = _iteration(session, stop)
            for key, value in losses.items():
                session.window["sums"][key] = session.window["sums"].get(key, 0.0) + value
            session.window["count"] += 1
            bar.update(1)
            if session.step % run_cfg.log_every == 0 or session.step == end:
                _log(session, started, bar, images)
                session.window, started = {"sums": {}, "count": 0}, time.perf_counter()
            if run_cfg.image_every and session.step % run_cfg.image_every == 0:
                session.save_images(images)
            if run_cfg.checkpoint_every and session.step % run_cfg.checkpoint_every == 0:
                session.save(periodic=True)
            info = StepInfo(
                session.step,
                end,
                losses,
                session.model,
                session.ctx.rank,
                session.ctx.world_size,
                session.run_dir,
            )
            for callback in callbacks:
                callback(info)
            if stop_now:
                raise KeyboardInterrupt
    except ForcedAbort:
        raise
    except KeyboardInterrupt:
        raise _interrupted(session) from None
    finally:
        bar.close()
        session.runlog.close()
        session.stream.close()
        session.runner.close()
    if session.step >= end:
        session.save(final=True)
        log.info("finished at step %d: %s", session.step, session.run_dir / "final.pt")


def _interrupted(session: TrainingSession) -> TrainingInterrupted:
    if session.updating:  # a KeyboardInterrupt without our handler (e.g. not the main thread)
        log.warning("interrupted inside step %d: saving a partly updated state", session.step + 1)
    last = session.save()
    message = (
        f"interrupted at step {session.step}: saved {last}; resume with "
        f"`segrenorm train --resume {session.run_dir}`"
    )
    return TrainingInterrupted(message, session.run_dir, session.step)
