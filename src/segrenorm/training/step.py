"""The forward and backward passes of one training iteration, optionally in two threads.

A translator's generator loss is the sum of two independent halves, one per cycle
direction (everything computed from ``a``, everything computed from ``b``), and so is the
discriminator loss (one per site). On CPU, :class:`StepRunner` can build and
back-propagate the two halves concurrently in two worker threads, each with half the
intra-op threads. That is the same computation: every parameter's gradient is the sum of
one contribution per half, and a sum of two floats does not depend on their order, so
runs stay deterministic. It is faster on few cores, where one convolution rarely keeps
every core busy, and far more robust when other processes share the cores (OpenMP teams
spin-wait on each other; two single-threaded workers do not).

Example:
    >>> runner = StepRunner(model, device=torch.device("cpu"))  # doctest: +SKIP
    >>> losses = runner.generator(batch)  # doctest: +SKIP
    >>> runner.backward(losses)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

from segrenorm.training.objective import (
    discriminator_half,
    frozen_discriminators,
    generator_half,
    join_halves,
)
from segrenorm.vocabulary import DIRECTIONS, SITES

if TYPE_CHECKING:
    from segrenorm.models.translator import Translator

__all__ = ["StepLosses", "StepRunner", "keep_freed_memory"]

T = TypeVar("T")

# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
_MMAP_THRESHOLD_MAX = 32 * 2**20  # glibc's largest accepted value on 64-bit


@dataclass(frozen=True)
class StepLosses:
    """The losses of one generator or discriminator step.

    Args:
        total: the weighted total (with its graph), the sum of ``parts``.
        terms: unweighted detached terms by name.
        outputs: detached outputs by name (images, argmax maps; empty for the
            discriminator).
        parts: the independent halves' totals, back-propagated one per worker.
    """

    total: Tensor
    terms: dict[str, Tensor]
    outputs: dict[str, Tensor]
    parts: tuple[Tensor, ...]


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel.

    Each iteration allocates and frees the same activations; by default glibc hands large
    freed blocks back, and every iteration then page-faults them in again (about 0.9 GB
    and a second of kernel time per ixi iteration on CPU). With a fixed mmap threshold at
    its maximum and no heap trimming, the memory is reused. Peak resident memory is
    unchanged; it is just not released between iterations.

    Returns:
        True when the settings were applied (Linux with glibc), False otherwise.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    ok_trim = mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    # One arena for all threads: memory freed by one step worker is reused by the other.
    ok_arena = mallopt(_M_ARENA_MAX, 1)
    return bool(ok_mmap) and bool(ok_trim) and bool(ok_arena)


class StepRunner:
    """Runs a translator's steps: sequentially, or with the two halves in two threads.

    Args:
        model: the translator.
        device: the training device; halves run concurrently only on CPU.
        amp: autocast dtype, or None for fp32.
        parallel: run the halves in two threads (CPU with at least 2 intra-op threads
            only; elsewhere this is ignored).
    """

    def __init__(
        self,
        model: Translator,
        *,
        device: torch.device,
        amp: torch.dtype | None = None,
        parallel: bool = True,
    ) -> None:
        self.model = model
        self.device = device
        self.amp = amp
        self.threads = torch.get_num_threads()
        self._pool: ThreadPoolExecutor | None = None
        if parallel and device.type == "cpu" and self.threads >= 2:
            self._pool = _start_pool(max(1, self.threads // 2))
            # Worker set-up also sets torch's process-wide default; restore ours.
            torch.set_num_threads(self.threads)

    @property
    def parallel(self) -> bool:
        """True when the halves run in two threads."""
        return self._pool is not None

    def close(self) -> None:
        """Stop the worker threads (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self) -> StepRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def _map(self, fns: Sequence[Callable[[], T]]) -> list[T]:
        """Call ``fns`` (one per half), concurrently when parallel; results in order."""
        if self._pool is None:
            return [fn() for fn in fns]
        futures = [self._pool.submit(fn) for fn in fns]
        return [f.result() for f in futures]

    def generator(self, batch: dict[str, Tensor]) -> StepLosses:
        """Forward pass of the generator step (see :func:`~.objective.generator_step`).

        Args:
            batch: the batch, on the training device.
        """
        model = self.model

        def half(direction: str) -> Callable[[], tuple[Tensor, dict[str, Tensor], Any]]:
            def run() -> tuple[Tensor, dict[str, Tensor], Any]:
                with self._autocast():  # autocast state is per thread
                    return generator_half(model, batch, direction)

            return run

        with frozen_discriminators(model):
            halves = self._map([half(d) for d in DIRECTIONS])
        total, terms, outputs = join_halves(halves)
        return StepLosses(total, terms, outputs, tuple(h[0] for h in halves))

    def discriminator(self, batch: dict[str, Tensor], outputs: dict[str, Tensor]) -> StepLosses:
        """Forward pass of the discriminator step (see :func:`~.objective.discriminator_step`).

        Args:
            batch: the batch given to :meth:`generator`.
            outputs: the generator step's outputs.
        """
        model = self.model

        def half(site: str) -> Callable[[], tuple[Tensor, dict[str, Tensor], Any]]:
            def run() -> tuple[Tensor, dict[str, Tensor], Any]:
                with self._autocast():
                    loss, terms = discriminator_half(model, batch, outputs, site)
                return loss, terms, {}

            return run

        halves = self._map([half(s) for s in SITES])
        total, terms, _ = join_halves(halves)
        return StepLosses(total, terms, {}, tuple(h[0] for h in halves))

    def backward(self, losses: StepLosses, scale: Callable[[Tensor], Tensor] | None = None) -> None:
        """Back-propagate ``losses.total``: one half per worker when parallel.

        Args:
            losses: from :meth:`generator` or :meth:`discriminator`.
            scale: the gradient scaler's ``scale`` (fp16), applied to each half.
        """
        scaled = scale if scale is not None else _identity
        if self._pool is None:
            scaled(losses.total).backward()
            return

        def run(part: Tensor) -> Callable[[], None]:
            return lambda: scaled(part).backward()

        self._map([run(part) for part in losses.parts])


def _identity(t: Tensor) -> Tensor:
    return t


def _start_pool(threads_per_worker: int) -> ThreadPoolExecutor:
    """Two worker threads, each with ``threads_per_worker`` intra-op threads, started now."""
    ready = threading.Barrier(2)

    def init() -> None:
        # OpenMP and MKL thread counts are per calling thread for threads other than main.
        torch.set_num_threads(threads_per_worker)
        # torch initialises a thread's count lazily from its process-wide default, which the
        # caller restores afterwards: trigger that initialisation now, while it is ours.
        torch.get_num_threads()

    pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="segrenorm-half", initializer=init)
    # Two tasks that wait for each other force both threads (and their set-up) to exist.
    for f in [pool.submit(ready.wait) for _ in range(2)]:
        f.result()
    return pool
