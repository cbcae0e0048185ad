"""Training state in checkpoints: RNG states, assembling, writing and resuming.

:func:`build_checkpoint` assembles the dict described in :mod:`segrenorm.models.checkpoint`
from a live training state, :func:`save_checkpoint` and :func:`save_rotating` write it
atomically, and :func:`restore_training_state` loads it back into freshly built objects so
that a resumed run continues exactly (RNG states included).

Example:
    >>> payload = build_checkpoint(config=cfg, cache_info={}, model=model, optimizers={},
    ...                            schedulers={}, step=0, data_stream={})  # doctest: +SKIP
    >>> save_checkpoint(payload, "runs/x/final.pt")  # doctest: +SKIP
"""

from __future__ import annotations

import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from segrenorm._version import __version__
from segrenorm.atomic import atomic_file
from segrenorm.config.schema import Config
from segrenorm.errors import CheckpointError, ConfigError
from segrenorm.models.checkpoint import FORMAT_VERSION

__all__ = [
    "build_checkpoint",
    "capture_rng_state",
    "check_resume_config",
    "restore_rng_state",
    "restore_training_state",
    "save_checkpoint",
    "save_rotating",
]


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain values.

    NumPy's and Python's states are tuples holding arrays; they are converted to lists of
    ints so that ``torch.load(weights_only=True)`` accepts them.
    """
    py_version, py_state, py_gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # noqa: NPY002
    state: dict[str, Any] = {
        "python": {"version": int(py_version), "state": list(py_state), "gauss_next": py_gauss},
        "numpy": {
            "kind": str(kind),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`.

    Args:
        state: the ``rng`` entry of a checkpoint. CUDA states are restored only when the
            same number of CUDA devices is visible (a CPU resume of a GPU run skips them).
    """
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - the legacy global state is what we restore
        (
            str(npy["kind"]),
            np.asarray(npy["keys"], dtype=np.uint32),
            int(npy["pos"]),
            int(npy["has_gauss"]),
            float(npy["cached_gaussian"]),
        )
    )
    # set_rng_state wants a CPU ByteTensor even when the checkpoint was mapped to a GPU.
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


def build_checkpoint(
    *,
    config: Config,
    cache_info: Mapping[str, Any],
    model: torch.nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler],
    step: int,
    data_stream: Mapping[str, Any],
    scaler: torch.amp.GradScaler | None = None,
    ema: Mapping[str, torch.Tensor] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the checkpoint dict of a training state (nothing is written).

    Args:
        config: the run's resolved configuration (stored as ``config.to_dict()``).
        cache_info: plain facts about the slice cache (path, classes, slice shape).
        model: the translator; its ``state_dict()`` is stored.
        optimizers: optimisers by parameter group name.
        schedulers: learning-rate schedulers by the same names.
        step: number of completed training iterations.
        data_stream: the batch stream's ``state_dict()``.
        scaler: the fp16 gradient scaler, when one is used.
        ema: the averaged inference weights, when the run keeps them.
        extra: further plain values (e.g. partial logging sums) stored under ``extra``.
    """
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "segrenorm_version": __version__,
        "config": config.to_dict(),
        "n_classes": int(config.data.n_classes),
        "cache_info": dict(cache_info),
        "model": model.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "schedulers": {name: sched.state_dict() for name, sched in schedulers.items()},
        "step": int(step),
        "rng": capture_rng_state(),
        "data_stream": dict(data_stream),
    }
    if scaler is not None and scaler.is_enabled():
        payload["scaler"] = scaler.state_dict()
    if ema is not None:
        payload["ema"] = dict(ema)
    if extra:
        payload["extra"] = dict(extra)
    return payload


class _Resumable(Protocol):
    def load_state_dict(self, state: Any, /) -> Any: ...


def restore_training_state(
    payload: Mapping[str, Any],
    source: str | Path,
    *,
    model: torch.nn.Module,
    optimizers: Mapping[str, torch.optim.Optimizer],
    schedulers: Mapping[str, torch.optim.lr_scheduler.LRScheduler],
    scaler: torch.amp.GradScaler,
    stream: _Resumable,
    ema: _Resumable | None = None,
) -> int:
    """Load a checkpoint's training state into freshly built objects; return its step.

    RNG states are restored last, after everything that was built consumed random numbers,
    so the next draw is the one the interrupted run would have made.

    Args:
        payload: a dict from :func:`~segrenorm.models.checkpoint.load_checkpoint`.
        source: the file it came from, for error messages.
        model: the translator, built from the same config.
        optimizers: optimisers by group name.
        schedulers: schedulers by group name.
        scaler: the gradient scaler (restored when enabled and saved).
        stream: the batch stream.
        ema: the weight average; restored from ``payload["ema"]`` when saved (a run that
            starts keeping one on resume starts it from the loaded weights).

    Raises:
        CheckpointError: the state does not fit the objects (other groups or shapes).
    """
    try:
        model.load_state_dict(payload["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(payload["optimizers"][name])
        for name, sched in schedulers.items():
            sched.load_state_dict(payload["schedulers"][name])
        if scaler.is_enabled() and "scaler" in payload:
            scaler.load_state_dict(payload["scaler"])
        stream.load_state_dict(payload["data_stream"])
        if ema is not None and "ema" in payload:
            ema.load_state_dict(payload["ema"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"{source}: its training state does not fit this run "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]})."
        ) from None
    restore_rng_state(payload["rng"])
    return int(payload["step"])


def save_checkpoint(payload: Mapping[str, Any], path: str | Path) -> Path:
    """Write a checkpoint atomically: a temporary file in the same folder, then a rename.

    A crash while saving therefore leaves the previous file at ``path`` intact.

    Args:
        payload: a dict from :func:`build_checkpoint`.
        path: destination file; its folder is created if needed.
    """
    target = Path(path)
    with atomic_file(target, fsync=True) as handle:
        torch.save(dict(payload), handle)
    return target


def save_rotating(payload: Mapping[str, Any], folder: str | Path, step: int, *, keep: int) -> Path:
    """Save ``step-XXXXXXX.pt`` and ``last.pt`` in ``folder``; keep the newest ``keep`` steps.

    The payload is serialised once; ``last.pt`` is an atomic copy of the step file.

    Args:
        payload: a dict from :func:`build_checkpoint`.
        folder: the run's ``checkpoints`` folder.
        step: the payload's step.
        keep: periodic files kept (0 keeps only ``last.pt``).

    Returns:
        The path of ``last.pt``.
    """
    root = Path(folder)
    last = root / "last.pt"
    if keep <= 0:
        return save_checkpoint(payload, last)
    periodic = save_checkpoint(payload, root / f"step-{step:07d}.pt")
    with periodic.open("rb") as source, atomic_file(last) as handle:
        shutil.copyfileobj(source, handle)  # streamed: a checkpoint can be large
    steps = sorted(root.glob("step-*.pt"), key=lambda p: p.stem)  # zero-padded: sorts by step
    for old in steps[:-keep]:
        old.unlink(missing_ok=True)
    return last


def check_resume_config(config: Config, saved: Config, source: str | Path) -> None:
    """Refuse to resume with model or data settings that differ from the checkpoint's.

    Optimisation and run settings may change (e.g. a longer schedule); ``data.num_workers``
    too, since batches do not depend on it.

    Args:
        config: the config the run is resumed with.
        saved: the checkpoint's config.
        source: the checkpoint file, for the message.

    Raises:
        ConfigError: listing every differing field with both values.
    """
    mine, theirs = config.to_dict(), saved.to_dict()
    diffs = [
        f"{section}.{key}: checkpoint {theirs[section][key]!r}, given {value!r}"
        for section in ("model", "data")
        for key, value in mine[section].items()
        if key != "num_workers" and value != theirs[section].get(key)
    ]
    if diffs:
        raise ConfigError(
            f"cannot resume from {source} with a different config ({'; '.join(diffs)}): "
            "resume with the checkpoint's own config (omit --config) or start a new run."
        )
