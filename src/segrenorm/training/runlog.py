"""Run directories that explain themselves: resolved config, JSON log, TensorBoard.

Layout written by :func:`segrenorm.training.trainer.train` (only on rank 0)::

    RUNS/00000-<config name>-<translator>/
      config.json              resolved config, cache path, versions
      log.jsonl                one JSON object per log step: step, losses, lr, it/s
      tensorboard/             the same scalars for TensorBoard
      images/step-000500.png   translation grids (see :mod:`segrenorm.training.images`)
      checkpoints/             step-XXXXXXX.pt, last.pt
      final.pt                 the model at the end of training
"""

from __future__ import annotations

import json
import math
import platform
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from segrenorm._version import __version__
from segrenorm.atomic import write_bytes_atomic, write_json_atomic
from segrenorm.errors import InputError

if TYPE_CHECKING:
    from segrenorm.data.slice_cache import SliceCache

__all__ = [
    "RunLog",
    "create_run_dir",
    "describe_cache",
    "find_finished_run",
    "list_runs",
    "versions",
    "write_run_record",
]

_RUN_NAME = re.compile(r"^(\d{5})-")


def versions() -> dict[str, str]:
    """Versions of segrenorm, torch, numpy and Python, for ``config.json``."""
    return {
        "segrenorm": str(__version__),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-.") or "run"


def create_run_dir(out: str | Path, name: str, translator: str) -> Path:
    """Create ``OUT/NNNNN-<name>-<translator>`` with the next free number.

    The number is one more than the largest existing ``NNNNN-*`` entry; creation with
    ``mkdir(exist_ok=False)`` retries if another process takes the same number first.

    Args:
        out: parent folder of all runs (created if needed).
        name: the config name.
        translator: the translator kind.

    Raises:
        InputError: ``out`` exists but is not a folder.
    """
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise InputError(f"--out {root} is a file: give a folder to hold run directories.")
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(1000):
        taken = [int(m.group(1)) for p in root.iterdir() if (m := _RUN_NAME.match(p.name))]
        number = max(taken, default=-1) + 1
        run_dir = root / f"{number:05d}-{_slug(name)}-{_slug(translator)}"
        try:
            run_dir.mkdir()
        except FileExistsError:
            continue
        return run_dir
    raise InputError(f"could not create a new run directory in {root}: too many races.")


def list_runs(runs: str | Path, name: str, translator: str) -> list[Path]:
    """The run directories that :func:`create_run_dir` made for ``name`` and ``translator``.

    Args:
        runs: the parent folder of the runs (it need not exist).
        name: the config name.
        translator: the translator kind.

    Returns:
        ``RUNS/NNNNN-<name>-<translator>`` folders, oldest (lowest number) first.
    """
    root = Path(runs)
    if not root.is_dir():
        return []
    pattern = re.compile(rf"\d{{5}}-{re.escape(_slug(name))}-{re.escape(_slug(translator))}")
    return sorted(p for p in root.iterdir() if p.is_dir() and pattern.fullmatch(p.name))


def find_finished_run(runs: str | Path, name: str, translator: str) -> Path | None:
    """The newest run of ``name`` and ``translator`` that finished (it holds ``final.pt``).

    Args:
        runs: the parent folder of the runs (it need not exist).
        name: the config name.
        translator: the translator kind.

    Returns:
        The run directory, or None when no run of that config finished.
    """
    done = [run for run in list_runs(runs, name, translator) if (run / "final.pt").is_file()]
    return done[-1] if done else None


class RunLog:
    """Appends scalars to ``log.jsonl`` and TensorBoard; writes nothing when disabled.

    Args:
        run_dir: the run directory.
        enabled: False on non-zero ranks.
        tensorboard: also write TensorBoard event files under ``run_dir/tensorboard``.
    """

    def __init__(self, run_dir: Path, *, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.path = run_dir / "log.jsonl"
        self._writer: Any = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop log lines past ``step`` (left by a run that went on after its last checkpoint).

        Args:
            step: the step training resumes from.
        """
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
            if isinstance(entry, dict) and int(entry.get("step", 0)) <= step:
                kept.append(line)
        write_bytes_atomic(self.path, "".join(line + "\n" for line in kept).encode("utf-8"))

    def log(
        self,
        step: int,
        losses: Mapping[str, float],
        lr: Mapping[str, float],
        it_per_s: float,
        **extra: Any,
    ) -> dict[str, Any]:
        """Record one log step and return the JSON object written.

        Args:
            step: completed iterations.
            losses: mean loss terms since the previous log step.
            lr: learning rate per optimiser.
            it_per_s: iterations per second since the previous log step.
            extra: further JSON-serialisable fields.
        """
        entry: dict[str, Any] = {
            "step": int(step),
            "losses": {k: _json_float(v) for k, v in losses.items()},
            "lr": {k: float(v) for k, v in lr.items()},
            "it_per_s": round(float(it_per_s), 4),
            **extra,
        }
        if not self.enabled:
            return entry
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(entry) + "\n")
        if self._writer is not None:
            for key, value in losses.items():
                self._writer.add_scalar(f"loss/{key}", value, step)
            for key, value in lr.items():
                self._writer.add_scalar(f"lr/{key}", value, step)
            self._writer.add_scalar("speed/it_per_s", it_per_s, step)
            for direction, value in (extra.get("conditioning") or {}).items():
                if value is not None:
                    self._writer.add_scalar(f"conditioning/{direction}", value, step)
        return entry

    def close(self) -> None:
        """Flush and close the TensorBoard writer."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _json_float(value: float) -> float | str:
    # JSON has no NaN/Inf; strings keep the log parseable by strict readers.
    return float(value) if math.isfinite(value) else str(value)


def describe_cache(cache: SliceCache) -> dict[str, Any]:
    """Plain facts about a slice cache, kept in ``config.json`` and checkpoints.

    Args:
        cache: the opened slice cache.
    """
    from segrenorm.data.facts import INFERENCE_KEY, inference_facts

    return {
        "path": str(Path(cache.path).resolve()),
        "n_classes": cache.n_classes,
        "class_names": list(cache.class_names),
        "slice_shape": list(cache.slice_shape),
        "sites": list(cache.site_names),
        # Slice axis, spacing and each site's intensity scale: `segrenorm harmonize` needs
        # them to cut volumes like the training slices and map outputs to the target scale.
        INFERENCE_KEY: inference_facts(cache.manifest),
    }


def write_run_record(
    run_dir: Path,
    *,
    config: dict[str, Any],
    cache_info: Mapping[str, Any],
    extra: Mapping[str, Any],
    resumed_from: Path | None = None,
    step: int = 0,
) -> Path:
    """Write (or, on resume, update) ``config.json``: resolved config, cache and versions.

    Args:
        run_dir: the run directory.
        config: the resolved config as a dict.
        cache_info: facts about the slice cache (``path`` is the cache folder).
        extra: further fields (device, amp, world size).
        resumed_from: the checkpoint a resumed run started from; appended to ``resumes``.
        step: the step it resumed at.
    """
    path = run_dir / "config.json"
    record: dict[str, Any] = {}
    if path.is_file():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            record = loaded if isinstance(loaded, dict) else {}
        except (OSError, json.JSONDecodeError):
            record = {}  # rewritten below from what this run knows
    record.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    record.update(
        config=config,
        cache=cache_info.get("path"),
        cache_info=dict(cache_info),
        versions=versions(),
        **extra,
    )
    if resumed_from is not None:
        resumes = list(record.get("resumes", []))
        resumes.append({"from": str(resumed_from), "step": step, "at": time.ctime()})
        record["resumes"] = resumes
    return write_json_atomic(path, record)
