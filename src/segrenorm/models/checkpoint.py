"""Checkpoint files: their format, and loading them back into a translator.

A checkpoint is a plain dict saved with :func:`torch.save` (assembled and written by
:mod:`segrenorm.training.state`)::

    {format_version, segrenorm_version, config, n_classes, cache_info, model,
     optimizers {name: state}, schedulers {name: state}, step,
     rng {python, numpy, torch, cuda?}, data_stream, scaler?, ema?, extra?}

``ema`` holds the moving average of the inference networks' weights when the run keeps
one (``optim.ema_decay``); :func:`load_translator` then uses it.

Everything in it is a tensor or a plain Python value (RNG states included), so loading
uses ``torch.load(..., weights_only=True)`` and never unpickles arbitrary objects.

Example:
    >>> translator, config = load_translator("runs/00000-cpu-segrenorm")  # doctest: +SKIP
    >>> y = translator.translate(x)  # doctest: +SKIP
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from segrenorm._version import __version__
from segrenorm.config.build import config_from_dict
from segrenorm.config.schema import Config
from segrenorm.errors import CheckpointError, InputError, SegrenormError

if TYPE_CHECKING:
    from segrenorm.models.translator import Translator

__all__ = [
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "config_of",
    "load_checkpoint",
    "load_translator",
    "read_tensor_file",
    "resolve_checkpoint",
]

FORMAT_VERSION = 1
REQUIRED_KEYS: tuple[str, ...] = (
    "format_version",
    "segrenorm_version",
    "config",
    "n_classes",
    "cache_info",
    "model",
    "optimizers",
    "schedulers",
    "step",
    "rng",
    "data_stream",
)


def resolve_checkpoint(path: str | Path, *, prefer: tuple[str, ...] = ("last.pt",)) -> Path:
    """Turn a checkpoint file or a run directory into a checkpoint file.

    Args:
        path: a ``.pt`` file, or a run directory holding ``checkpoints/<name>``.
        prefer: file names tried in order inside ``RUN/checkpoints/``.

    Raises:
        InputError: the path does not exist or the run directory holds none of ``prefer``.
    """
    given = Path(path)
    if given.is_file():
        return given
    if given.is_dir():
        for name in prefer:
            for candidate in (given / "checkpoints" / name, given / name):
                if candidate.is_file():
                    return candidate
        raise InputError(
            f"{given} holds no checkpoint ({' or '.join('checkpoints/' + n for n in prefer)} "
            "not found): pass a run directory written by `segrenorm train` or a .pt file."
        )
    raise InputError(f"checkpoint {given} does not exist: check the path.")


def read_tensor_file(
    file: Path, *, map_location: str | torch.device, foreign: str, damaged: str
) -> Any:
    """``torch.load(file, weights_only=True)``, with errors that say what to do.

    Args:
        file: an existing file.
        map_location: where tensors are placed, as in :func:`torch.load`.
        foreign: the end of the message when the file holds other Python objects.
        damaged: the end of the message when the file is truncated or corrupt.

    Raises:
        CheckpointError: the file holds objects ``weights_only`` refuses, or cannot be read.
    """
    try:
        return torch.load(file, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{file} holds Python objects other than tensors and plain values, which segrenorm "
            f"refuses to unpickle (weights_only=True): {foreign}"
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... for damaged files
        detail = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).split(". ")[0][:160]
        raise CheckpointError(
            f"{file} is truncated or corrupt ({type(exc).__name__}: {detail}); {damaged}"
        ) from None


def load_checkpoint(
    path: str | Path, *, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`segrenorm.training.state.save_checkpoint`.

    Args:
        path: the ``.pt`` file (see :func:`resolve_checkpoint` for run directories).
        map_location: where tensors are placed, as in :func:`torch.load`.

    Raises:
        InputError: the file does not exist.
        CheckpointError: the file is truncated or corrupt, holds something other than a
            segrenorm checkpoint, comes from another format version or lacks keys.
    """
    file = Path(path)
    if not file.is_file():
        raise InputError(f"checkpoint {file} does not exist: check the path.")
    payload = read_tensor_file(
        file,
        map_location=map_location,
        foreign="it was not written by segrenorm; use a checkpoint from `segrenorm train`.",
        damaged="use another checkpoint, e.g. the run's checkpoints/step-*.pt or last.pt.",
    )
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{file} holds a {type(payload).__name__}, not a segrenorm checkpoint dict."
        )
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{file} has checkpoint format_version {version!r}; this segrenorm "
            f"({__version__}) reads version {FORMAT_VERSION}: use the segrenorm "
            f"version that wrote it ({payload.get('segrenorm_version', 'unknown')})."
        )
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(
            f"{file} lacks the key(s) {', '.join(missing)}: it is incomplete and cannot be "
            "used; pick another checkpoint."
        )
    return payload


def config_of(payload: Mapping[str, Any], *, source: str | Path = "checkpoint") -> Config:
    """Rebuild the :class:`Config` stored in a checkpoint.

    Args:
        payload: a dict from :func:`load_checkpoint`.
        source: the file it came from, for error messages.

    Raises:
        CheckpointError: the stored config is not valid for this segrenorm.
    """
    try:
        return config_from_dict(dict(payload["config"]))
    except SegrenormError as exc:
        raise CheckpointError(f"{source}: its stored config is not valid here ({exc}).") from None


def load_translator(
    path: str | Path, device: str | torch.device = "cpu", *, average: bool = True
) -> tuple[Translator, Config]:
    """Rebuild the trained translator from a checkpoint or run directory, in eval mode.

    Only the checkpoint's own config is used: no command-line flags are needed.

    Args:
        path: a ``.pt`` checkpoint, or a run directory (``final.pt`` is preferred over
            ``last.pt``).
        device: where to put the networks.
        average: use the moving average of the weights when the checkpoint has one
            (``optim.ema_decay``); False loads the raw weights of the last step.

    Raises:
        InputError: the path does not exist.
        CheckpointError: the file is unusable or its weights do not fit its config.
    """
    from segrenorm.models.translator import Translator

    file = resolve_checkpoint(path, prefer=("final.pt", "last.pt"))
    payload = load_checkpoint(file, map_location="cpu")
    config = config_of(payload, source=file)
    if int(payload["n_classes"]) != config.data.n_classes:
        raise CheckpointError(
            f"{file}: n_classes {payload['n_classes']} differs from its config's "
            f"data.n_classes {config.data.n_classes}; the file is inconsistent."
        )
    translator = Translator.from_config(config)
    try:
        translator.load_state_dict(payload["model"], strict=True)
        if average and "ema" in payload:
            # The averaged inference weights; the discriminators keep their raw weights.
            translator.load_state_dict({**payload["model"], **payload["ema"]}, strict=True)
    except (RuntimeError, KeyError) as exc:
        raise CheckpointError(
            f"{file}: the stored weights do not fit a {config.model.translator.value} "
            f"translator built from its config ({str(exc).splitlines()[0]})."
        ) from None
    translator.to(torch.device(device))
    translator.eval()
    return translator, config
