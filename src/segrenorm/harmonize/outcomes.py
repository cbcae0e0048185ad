"""What became of one input file, and the helpers every harmonize loop reports with.

:class:`FileResult` is one row of the summary table. A file fails alone: what it may raise
without stopping the others is :data:`PER_FILE_ERRORS`, and its message is
:func:`failure_reason`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from segrenorm.errors import SegrenormError, one_line

__all__ = [
    "PER_FILE_ERRORS",
    "FileCallback",
    "FileResult",
    "existing_output",
    "failure",
    "failure_reason",
]

log = logging.getLogger("segrenorm.harmonize.files")  # the logger harmonize always used

#: Called before each file with (index within this rank's share, share size, input path).
FileCallback = Callable[[int, int, Path], None]


@dataclass(frozen=True)
class FileResult:
    """The outcome of one input file.

    Args:
        input: the input file.
        output: the output file (None when no output was planned).
        status: ``"ok"``, ``"skipped"`` (output existed, ``skip_existing``) or ``"failed"``.
        seconds: wall time spent on it.
        message: the error for a failure, the warnings for a success.
        rank: the process that handled it.
    """

    input: Path
    output: Path | None
    status: str
    seconds: float = 0.0
    message: str = ""
    rank: int = 0


#: What one file may raise without stopping the others (the table shows it).
PER_FILE_ERRORS = (SegrenormError, OSError, EOFError, ValueError, RuntimeError, MemoryError)


def failure_reason(exc: BaseException) -> str:
    """A failure's message: ours as they are, anything else with its type.

    Args:
        exc: what a file raised.
    """
    if isinstance(exc, SegrenormError):
        return str(exc)
    return f"{type(exc).__name__}: {one_line(exc)}"


def existing_output(
    src: Path, dst: Path, skip_existing: bool, overwrite: bool, rank: int
) -> FileResult | None:
    """The result of a file whose output exists (skipped or refused), None to go on.

    Args:
        src: the input.
        dst: its planned output.
        skip_existing: an existing output is kept (skipped).
        overwrite: an existing output is replaced (go on).
        rank: the process handling it.
    """
    if dst.exists() and skip_existing:
        return FileResult(src, dst, "skipped", 0.0, "output exists", rank)
    if dst.exists() and not overwrite:
        message = "output exists; pass --skip-existing to keep it or --overwrite to replace it"
        return FileResult(src, dst, "failed", 0.0, message, rank)
    return None


def failure(
    src: Path, dst: Path, message: str, seconds: float, rank: int, *, report: bool = True
) -> FileResult:
    """A failed file's result, logged unless ``report`` is False (the caller logs it later).

    Args:
        src: the input.
        dst: its planned output.
        message: why it failed (a leading ``"<src>: "`` is dropped: the table names the file).
        seconds: time spent on it.
        rank: the process that handled it.
        report: log the failure now.
    """
    # io's messages start with the path; the table has a file column, so keep the reason.
    reason = message.removeprefix(f"{src}: ")
    if report:
        log.error("%s: %s", src, reason)
    return FileResult(src, dst, "failed", seconds, reason, rank)
