"""Data-parallel training under ``torchrun``: process group, devices and gradient averaging.

Launch with ``torchrun --nproc_per_node N -m segrenorm train ...``: each process reads
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, joins a process group (NCCL on GPUs, gloo on
CPU), takes the device of its local rank, starts from rank 0's parameters and averages
gradients after every backward pass. Each rank draws its own shard of the data; only rank 0
writes the run directory.

Why not :class:`torch.nn.parallel.DistributedDataParallel`? A GAN step runs two backward
passes that touch the networks differently: the generator loss back-propagates *through*
the discriminators (whose gradients are then thrown away) and the discriminator loss runs
them again on detached fakes; each generator is called several times per step (G(a),
G(F(b)), identity G(b)); segmentation nets and FiLM heads may be unused (CycleGAN, warm-up).
DDP's reducer fires on every backward of a wrapped module, needs ``find_unused_parameters``
for the unused ones, and re-broadcasts buffers (spectral-norm power-iteration vectors) at
every forward. Averaging exactly the gradients of the parameters about to be stepped, once
per optimiser step, is simpler, cannot double-count and costs the same traffic; what it
gives up is overlapping communication with the backward pass, which matters little at
these model sizes.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from types import FrameType
from typing import Any

import torch
import torch.distributed as dist

from segrenorm.config.schema import AmpMode
from segrenorm.errors import ConfigError

__all__ = [
    "DEFAULT_BUCKET_BYTES",
    "DistContext",
    "ForcedAbort",
    "StopSignals",
    "all_reduce_gradients",
    "all_reduce_sum",
    "autocast_dtype",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "init_distributed",
    "launched_by_torchrun",
    "resolve_device",
    "shutdown_distributed",
]

log = logging.getLogger(__name__)

DEFAULT_BUCKET_BYTES = 25 * 1024 * 1024


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a (possibly single-process) run.

    Args:
        rank: global rank (0 in a single-process run).
        world_size: number of processes.
        local_rank: rank on this machine; picks the CUDA device.
        device: the device this process trains on.
        backend: ``"nccl"``, ``"gloo"`` or ``None`` when not distributed.
        owns_group: whether :func:`init_distributed` created the process group (and so
            :func:`shutdown_distributed` should destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints progress."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """True when gradients and values must be exchanged with other processes."""
        return self.world_size > 1 and dist.is_available() and dist.is_initialized()


class ForcedAbort(KeyboardInterrupt):
    """A second stop signal: leave at once, without writing a checkpoint."""


class StopSignals:
    """Turn the first SIGINT/SIGTERM into a request to stop after the current step.

    Stopping between steps keeps the saved state exact; the trainer all-reduces
    ``requested`` each step so every rank stops at the same one (torchrun forwards SIGTERM
    to all workers, but they need not receive it during the same step). A second signal
    raises :class:`ForcedAbort` at once. Handlers are installed only from the main thread
    and restored on exit.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}
        self._pid = os.getpid()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: the main process decides, then stops it
        if self.requested:
            raise ForcedAbort(f"signal {signum} received twice: aborted without saving")
        self.requested = True
        log.warning("stop requested: finishing this step, then saving (signal again to abort)")

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def launched_by_torchrun() -> bool:
    """True when the environment names a rank and a world size (torchrun or similar)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name}={raw!r} must be an integer.") from None


def resolve_device(spec: str, *, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """Turn ``run.device`` into a device that exists here.

    Args:
        spec: ``auto`` (CUDA when visible, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        local_rank: this process's local rank; under ``distributed`` it picks the GPU.
        distributed: several processes share the machine, one GPU each.

    Raises:
        ConfigError: a CUDA device is asked for but is not visible.
    """
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if spec != "auto" and not (spec == "cuda" or spec.startswith("cuda:")):
        raise ConfigError(f"run.device={spec!r} is unknown: use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"run.device={spec!r} but no CUDA device is visible: use run.device=auto or cpu."
        )
    count = torch.cuda.device_count()
    if distributed or spec in ("auto", "cuda"):
        index = local_rank if distributed else 0
        if spec.startswith("cuda:") and int(spec.split(":", 1)[1]) != index:
            log.warning("run.device=%s ignored under torchrun: rank uses cuda:%d", spec, index)
    else:
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"run.device={spec!r} is not cuda:N with an integer N.") from None
    if not 0 <= index < count:
        raise ConfigError(
            f"run.device asks for cuda:{index} but only {count} CUDA device(s) are visible: "
            "use fewer processes per node or another device index."
        )
    return torch.device("cuda", index)


def autocast_dtype(mode: AmpMode, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``run.amp`` on ``device``; ``None`` means full fp32.

    Args:
        mode: ``auto`` (bf16 on CUDA devices supporting it, else fp32), ``off``, ``bf16``
            or ``fp16`` (CUDA only; trained with a gradient scaler).
        device: the training device.

    Raises:
        ConfigError: fp16 asked for on a non-CUDA device.
    """
    if mode is AmpMode.OFF:
        return None
    if mode is AmpMode.AUTO:
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else None
    if mode is AmpMode.BF16:
        return torch.bfloat16
    if device.type != "cuda":
        raise ConfigError(f"run.amp=fp16 needs a CUDA device, not {device}: use off or bf16.")
    return torch.float16


def init_distributed(device_spec: str, *, timeout_s: float = 1800.0) -> DistContext:
    """Join the ``torchrun`` process group when launched by it; otherwise a 1-process context.

    Args:
        device_spec: ``run.device``.
        timeout_s: how long collectives wait for a missing rank before failing.

    Raises:
        ConfigError: malformed rank variables or an unavailable device.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size <= 1 or not launched_by_torchrun():
        return DistContext(device=resolve_device(device_spec))
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK={rank} is outside 0..{world_size - 1} (WORLD_SIZE={world_size}).")
    if not dist.is_available():
        raise ConfigError("torch.distributed is not available in this torch build.")
    device = resolve_device(device_spec, local_rank=local_rank, distributed=True)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    if dist.get_world_size() != world_size:
        raise ConfigError(
            f"the process group has {dist.get_world_size()} ranks but WORLD_SIZE={world_size}."
        )
    return DistContext(rank, world_size, local_rank, device, backend, owns)


def shutdown_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it.

    Args:
        ctx: the context returned by :func:`init_distributed`.
    """
    if ctx.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def _buckets(tensors: Sequence[torch.Tensor], bucket_bytes: int) -> Iterator[list[torch.Tensor]]:
    """Consecutive groups of same-dtype, same-device tensors of at most ``bucket_bytes``.

    The order depends only on the input order, so every rank forms identical buckets.
    """
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        compatible = not bucket or (
            bucket[0].dtype == tensor.dtype and bucket[0].device == tensor.device
        )
        if bucket and (not compatible or size + nbytes > bucket_bytes):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += nbytes
    if bucket:
        yield bucket


def _flat_collective(
    tensors: Sequence[torch.Tensor], bucket_bytes: int, op: Any, scale: float | None
) -> None:
    """Run ``op`` on flattened buckets of ``tensors`` and copy the results back in place."""
    for bucket in _buckets(tensors, bucket_bytes):
        flat = torch.cat([t.reshape(-1) for t in bucket])  # (sum of numels,)
        op(flat)
        if scale is not None:
            flat.mul_(scale)
        offset = 0
        for tensor in bucket:
            n = tensor.numel()
            tensor.copy_(flat[offset : offset + n].view_as(tensor))
            offset += n


def broadcast_module(
    module: torch.nn.Module, ctx: DistContext, *, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> None:
    """Copy rank 0's parameters and buffers to every rank (no-op when not distributed).

    Args:
        module: the replicated model.
        ctx: the distributed context.
        bucket_bytes: size of the flattened messages.
    """
    if not ctx.enabled:
        return
    tensors = [t.data for t in (*module.parameters(), *module.buffers())]
    with torch.no_grad():
        _flat_collective(tensors, bucket_bytes, lambda flat: dist.broadcast(flat, src=0), None)


def all_reduce_gradients(
    params: Iterable[torch.nn.Parameter],
    ctx: DistContext,
    *,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> None:
    """Average the gradients of ``params`` over all ranks, in place, bucket by bucket.

    Parameters without a gradient are skipped: every rank runs the same code path, so the
    same parameters lack one everywhere, and giving them a zero gradient instead would make
    Adam move them with stale momentum.

    Args:
        params: the parameters about to be stepped.
        ctx: the distributed context (no-op when not distributed).
        bucket_bytes: size of the flattened messages.
    """
    if not ctx.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if any(g.is_sparse for g in grads):
        raise ConfigError("sparse gradients cannot be averaged across ranks.")
    with torch.no_grad():
        _flat_collective(grads, bucket_bytes, dist.all_reduce, 1.0 / ctx.world_size)


def all_reduce_sum(tensor: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (unchanged when not distributed).

    Args:
        tensor: a tensor on this rank's device.
        ctx: the distributed context.
    """
    if ctx.enabled:
        dist.all_reduce(tensor)
    return tensor


def broadcast_object(value: Any, ctx: DistContext) -> Any:
    """Rank 0's ``value`` on every rank (pickled; use for small values such as paths).

    Args:
        value: the value (only rank 0's is used).
        ctx: the distributed context.
    """
    if not ctx.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    """Wait until every rank gets here (no-op when not distributed).

    Args:
        ctx: the distributed context.
    """
    if ctx.enabled:
        dist.barrier()
