"""The automatic slice batch: time a few candidates once per model and slice size, keep the fastest.

Which batch translates slices fastest depends on the machine and the model: a wide model on
large slices fills the cores at batch 1, a small one is bound by per-op overhead and gains
from batches of 16 or more (BENCHMARKS.md, "Harmonize speed"). ``batch_size="auto"`` times
the view's translation on the slice shape at each candidate of :data:`BATCH_CANDIDATES` up to
a memory cap (:func:`batch_memory_cap`), in ascending order, and keeps the one with the most
slices per second; it stops early once a candidate gains less than 5% on the best so far, or
the timing has used its time budget (10 s). The choice is cached for the process, per model, slice
shape, device and thread count, so a folder of volumes pays for it once. Results do not
depend on the batch beyond float rounding: every slice is translated on its own (instance
normalisation, per-slice embeddings).

Example:
    >>> batch_memory_cap((208, 240), width=64)  # ixi at 1 mm: about 49 MiB a slice
    10
    >>> candidates_within(10)
    (1, 2, 4, 8)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import torch

from segrenorm.errors import ConfigError

__all__ = [
    "AUTO_BATCH",
    "BATCH_CANDIDATES",
    "BATCH_MEMORY_BYTES",
    "FIXED_BATCH",
    "BatchChoice",
    "batch_memory_cap",
    "candidates_within",
    "choose_batch",
    "chosen_batches",
    "clear_batch_cache",
    "parse_batch_size",
    "pick_fastest",
    "resolve_batch",
    "time_candidates",
]

log = logging.getLogger(__name__)

#: The batch choice that times candidates on the machine.
AUTO_BATCH = "auto"
#: The slice batch before ``auto`` (and still the one used with ``torch.compile``: timing
#: candidates there would compile the model once per candidate).
FIXED_BATCH = 16


def parse_batch_size(value: str | int | None, option: str = "--batch-size") -> int | str:
    """Validate a slice batch: ``"auto"`` or a whole number of slices of at least 1.

    Args:
        value: ``"auto"`` (None means ``"auto"``), an int or a decimal string.
        option: the option's name, for messages.

    Returns:
        ``"auto"`` or the batch as an int.

    Raises:
        ConfigError: anything else, or a batch below 1.
    """
    if value is None:
        return AUTO_BATCH
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO_BATCH:
            return AUTO_BATCH
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(
                f"{option} {value!r} is unknown: use auto (the batch that measures fastest on "
                "this machine) or a number of slices per forward pass, e.g. 16"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(
            f"{option} {value!r} must be auto or a number of slices of at least 1, e.g. 16"
        )
    return value


#: Slice batches timed by ``auto``, ascending.
BATCH_CANDIDATES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
#: Activation memory one slice batch may take. Harmonize must stay within 2 GB: the process
#: itself (torch, the models, a 1 mm volume and its working copies, one volume read ahead and
#: one being written) takes 1.0-1.3 GB at batch 1 (BENCHMARKS.md), which leaves about 0.5 GB.
BATCH_MEMORY_BYTES = 512 * 2**20
#: Full-resolution feature maps of ``width`` channels alive at once in a generator block
#: (block input, convolution output, normalised output, residual): the estimate of
#: :func:`batch_memory_cap`. ixi measured ~17 MB a 208x240 slice (RSS at batch 16 against 1),
#: this estimate gives 49 MiB: it errs on the safe side.
LIVE_PLANES_PER_WIDTH = 4
#: A candidate that beats the best so far by less than this factor ends the timing: past
#: the knee larger batches only grow the working set (and the time spent timing them).
MIN_GAIN = 1.05

#: (model, slice shape, ...) -> the choice made in this process.
_CACHE: dict[Hashable, BatchChoice] = {}


@dataclass(frozen=True)
class BatchChoice:
    """The slice batch used for one model and slice shape, and how it was chosen.

    Args:
        batch: slices per forward pass.
        shape: the padded slice shape (H, W) it was chosen for.
        how: ``"timed"`` (``auto``), ``"given"`` (a number was asked for) or ``"compiled"``
            (``auto`` with ``torch.compile``: the fixed batch).
        cap: the memory cap of the candidates (None when not timed).
        rates: (batch, slices per second) of each candidate timed, in the order timed.
    """

    batch: int
    shape: tuple[int, int]
    how: str = "timed"
    cap: int | None = None
    rates: tuple[tuple[int, float], ...] = ()

    def note(self) -> str:
        """One line for the run's log and summary: the batch and why."""
        size = f"{self.shape[0]}x{self.shape[1]} slices"
        if self.how == "given":
            return f"slice batch {self.batch} (as given) for {size}"
        if self.how == "compiled":
            return f"slice batch {self.batch} for {size} (auto is not timed with torch.compile)"
        timed = ", ".join(f"{b}: {rate:.1f}" for b, rate in self.rates)
        return (
            f"slice batch auto: {self.batch} for {size} (slices/s at each batch timed: {timed};"
            f" memory cap {self.cap})"
        )


def batch_memory_cap(
    shape: Sequence[int], width: int, *, context: int = 1, budget: int = BATCH_MEMORY_BYTES
) -> int:
    """The largest slice batch whose estimated activations fit in ``budget`` bytes.

    One slice costs ``4 B x H x W x (LIVE_PLANES_PER_WIDTH x width + context + 1)``: the
    generator's full-resolution feature maps, its input stack and its output. The
    segmentation net runs in chunks of ``seg_batch`` slices whatever the batch, so it does
    not grow with it.

    Args:
        shape: the padded slice shape (H, W).
        width: channels of the model's widest full-resolution feature map (its ``ngf``).
        context: slices per input stack.
        budget: bytes the batch may take.

    Returns:
        The cap, at least 1.

    Raises:
        ConfigError: a non-positive side, width, context or budget.
    """
    height, side = (int(s) for s in shape)
    if min(height, side, width, context, budget) < 1:
        raise ConfigError(
            f"batch memory cap needs positive sizes, got slice {height}x{side}, width {width}, "
            f"context {context} and budget {budget} B"
        )
    per_slice = 4 * height * side * (LIVE_PLANES_PER_WIDTH * width + context + 1)
    return max(1, budget // per_slice)


def candidates_within(cap: int, candidates: Sequence[int] = BATCH_CANDIDATES) -> tuple[int, ...]:
    """The candidates no larger than ``cap`` (batch 1 when none is).

    Args:
        cap: the memory cap (see :func:`batch_memory_cap`).
        candidates: the batches to choose from.
    """
    within = tuple(sorted(int(c) for c in candidates if 1 <= c <= cap))
    return within or (1,)


def time_candidates(
    translate: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, int],
    channels: int,
    candidates: Sequence[int],
    *,
    device: torch.device | str = "cpu",
    clock: Callable[[], float] = time.perf_counter,
    min_seconds: float = 0.05,
    budget_seconds: float = 10.0,
) -> tuple[tuple[int, float], ...]:
    """Slices per second of ``translate`` at each candidate batch, smallest first.

    Each candidate runs once untimed (kernels are built for a new shape on the first call),
    then up to three times, until ``min_seconds`` have passed; its fastest call counts. The
    timing stops after a candidate that is not :data:`MIN_GAIN` times faster than the best
    before it, or once ``budget_seconds`` have been spent.

    Args:
        translate: the batch translation, (B, channels, H, W) -> (B, 1 or k, H, W).
        shape: the padded slice shape (H, W).
        channels: slices per input stack.
        candidates: batches to time, ascending.
        device: where ``translate`` runs (CUDA is synchronised around each call).
        clock: seconds (injectable for tests).
        min_seconds: least time spent timing one candidate.
        budget_seconds: time after which no larger candidate is timed.

    Returns:
        (batch, slices per second) for each candidate timed.
    """
    target = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    largest = max(candidates)
    probe = torch.rand(largest, channels, *shape, generator=generator) * 2 - 1  # in [-1, 1]
    probe = probe.to(target)

    def call(x: torch.Tensor) -> None:
        translate(x)
        if target.type == "cuda":
            torch.cuda.synchronize(target)

    rates: list[tuple[int, float]] = []
    started = clock()
    with torch.inference_mode():
        for batch in candidates:
            x = probe[:batch]
            call(x)  # untimed: the first call at a shape builds its kernels
            best, runs, first = float("inf"), 0, clock()
            while runs < 3 and (runs == 0 or clock() - first < min_seconds):
                tick = clock()
                call(x)
                best = min(best, clock() - tick)
                runs += 1
            rate = batch / max(best, 1e-9)
            before = max((r for _, r in rates), default=0.0)
            rates.append((batch, rate))
            if (rates[:-1] and rate < MIN_GAIN * before) or clock() - started > budget_seconds:
                break
    return tuple(rates)


def pick_fastest(rates: Sequence[tuple[int, float]]) -> int:
    """The batch with the most slices per second; the smaller batch on a tie (less memory).

    Args:
        rates: (batch, slices per second) pairs.

    Raises:
        ConfigError: no rates.
    """
    if not rates:
        raise ConfigError("no slice batch was timed: give at least one candidate")
    return min(rates, key=lambda pair: (-pair[1], pair[0]))[0]


def choose_batch(
    key: Hashable,
    translate: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, int],
    *,
    channels: int,
    width: int,
    device: torch.device | str = "cpu",
    candidates: Sequence[int] = BATCH_CANDIDATES,
    clock: Callable[[], float] = time.perf_counter,
) -> BatchChoice:
    """The fastest slice batch for ``translate`` on ``shape``, timed once per ``key``.

    Args:
        key: what identifies the model and its settings (the slice shape, device and torch
            thread count are added to it).
        translate: the batch translation to time.
        shape: the padded slice shape (H, W).
        channels: slices per input stack.
        width: the model's full-resolution width (see :func:`batch_memory_cap`).
        device: where ``translate`` runs.
        candidates: batches to choose from.
        clock: seconds (injectable for tests).

    Returns:
        The choice (cached: a second call with the same key returns it untimed).
    """
    full_key = (key, tuple(shape), channels, str(device), torch.get_num_threads())
    if full_key in _CACHE:
        return _CACHE[full_key]
    cap = batch_memory_cap(shape, width, context=channels)
    within = candidates_within(cap, candidates)
    rates = time_candidates(translate, shape, channels, within, device=device, clock=clock)
    size = (int(shape[0]), int(shape[1]))
    choice = BatchChoice(pick_fastest(rates), size, "timed", cap, rates)
    _CACHE[full_key] = choice
    log.info("%s", choice.note())
    return choice


def resolve_batch(
    batch_size: int | str,
    key: Hashable,
    translate: Callable[[torch.Tensor], torch.Tensor],
    shape: tuple[int, int],
    *,
    compiled: bool,
    channels: int,
    width: int,
    device: torch.device | str = "cpu",
) -> BatchChoice:
    """The batch a harmonizer uses: the one given, :data:`FIXED_BATCH` when compiled, or timed.

    Args:
        batch_size: ``"auto"`` or slices per forward pass (see :func:`parse_batch_size`).
        key: the model and its settings (see :func:`choose_batch`).
        translate: the batch translation timed by ``auto``.
        shape: the padded slice shape (H, W).
        compiled: the model is wrapped in ``torch.compile`` (its shapes are static).
        channels: slices per input stack.
        width: the model's full-resolution width.
        device: where ``translate`` runs.

    Raises:
        ConfigError: a ``batch_size`` that is neither ``"auto"`` nor a positive number.
    """
    chosen = parse_batch_size(batch_size, "batch size")
    size = (int(shape[0]), int(shape[1]))
    if isinstance(chosen, int):
        return BatchChoice(chosen, size, "given")
    if compiled:
        return BatchChoice(FIXED_BATCH, size, "compiled")
    return choose_batch(key, translate, size, channels=channels, width=width, device=device)


def chosen_batches() -> tuple[BatchChoice, ...]:
    """Every batch ``auto`` chose in this process so far, in the order chosen."""
    return tuple(_CACHE.values())


def clear_batch_cache() -> None:
    """Forget the batches chosen in this process (the next ``auto`` times again)."""
    _CACHE.clear()
