"""Atomic writes: nothing a reader can open is ever half-written.

Files are written to a temporary sibling and renamed over the target with
``os.replace`` (atomic on POSIX within one filesystem); folders are built under a
temporary sibling name and swapped into place, the old one removed only afterwards.

Temporary siblings are hidden and named ``.NAME.HOST-PID.XXXXXXXX.tmp`` after the process
writing them, so that what a killed process left behind can be told from the work of one
still running: :func:`remove_stale_temporaries` deletes the former (each command that writes
into a folder calls it once), so reruns after a ``kill -9`` do not pile them up. The host
part keeps letters, digits, ``_`` and ``-`` only (no dots), so one machine's name never ends
another's. Processes are told apart by host name and process id: containers that share a
host name and a folder but not a process-id namespace are not told apart (a temporary of a
running process in one may be taken for a dead one's in the other).

:func:`replace_dir` moves an old folder aside into ``.NAME.HOST-PID.XXXXXXXX.old`` while the
new one is renamed into place. A kill between the two renames leaves the old folder there;
:func:`remove_stale_temporaries` never deletes such a holder while it holds anything, and
logs a warning saying where the old folder is.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from segrenorm.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "atomic_file",
    "atomic_named_path",
    "atomic_path",
    "new_file_mode",
    "remove_stale_temporaries",
    "replace_dir",
    "temporary_dir",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def new_file_mode() -> int:
    """The mode an ordinary ``open(path, "w")`` would give a new file (0o666 minus umask).

    ``tempfile.mkstemp`` creates files readable by their owner only; results renamed into
    place get this mode instead, so reports and volumes are as shareable as any other file.
    """
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _host() -> str:
    """This machine's name as it appears in temporary names (file-name safe)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", socket.gethostname()) or "host"


def _temp_prefix(target: Path) -> str:
    """``.NAME.HOST-PID.``: how every temporary sibling of ``target`` of this process starts."""
    return f".{target.name}.{_host()}-{os.getpid()}."


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (when unsure, say yes)."""
    if os.name != "posix":
        return True  # os.kill(pid, 0) would terminate it on Windows: never guess there
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # e.g. another user's process (PermissionError): alive
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary siblings in ``folder`` left by processes of this machine that died.

    Only names this module gives (``.NAME.HOST-PID.XXXXXXXX.tmp``, read from the right) with
    this machine's host name and the id of a process that no longer runs are removed: a
    killed write leaves its partial file or folder behind, and nothing else ever renames or
    reads it. Temporaries of running processes, of other machines sharing the folder, and
    every other file are kept. A dead process's :func:`replace_dir` holder
    (``.NAME.HOST-PID.XXXXXXXX.old``) is removed when empty; one that still holds the old
    folder is kept and reported (a warning naming where it is).

    Args:
        folder: the folder to clean; a missing folder is fine.

    Returns:
        The paths removed.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    # From the right: the random part and the host hold no dots, the target's name may.
    pattern = re.compile(r"^\.(.+)\.([A-Za-z0-9_-]+)-(\d+)\.[A-Za-z0-9_]+\.(tmp|old)$")
    removed = []
    for entry in root.iterdir():
        match = pattern.match(entry.name)
        if match is None or match.group(2) != _host():
            continue
        pid = int(match.group(3))
        if pid == os.getpid() or _running(pid):
            continue
        if match.group(4) == "old":
            if not _remove_empty_holder(entry, match.group(1)):
                continue
        elif entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _remove_empty_holder(holder: Path, name: str) -> bool:
    """Remove a dead process's empty :func:`replace_dir` holder; report one holding a folder.

    Returns:
        Whether ``holder`` was removed.
    """
    if not holder.is_dir() or holder.is_symlink():
        return False
    if any(holder.iterdir()):
        target = holder.parent / name
        now = f"{target} exists now" if target.exists() else f"{target} does not exist"
        log.warning(
            "%s holds the folder %s was before a killed segrenorm run replaced it (%s): "
            "move %s back to %s, or delete %s once you do not need it",
            holder, target, now, holder / name, target, holder,
        )  # fmt: skip
        return False
    holder.rmdir()
    return True


def temporary_dir(target: str | Path) -> Path:
    """Create an empty hidden folder beside ``target`` to build it in (see :func:`replace_dir`).

    Args:
        target: the folder that will be built; its parent must exist.

    Returns:
        The new folder, ``.NAME.HOST-PID.XXXXXXXX.tmp`` beside ``target``.
    """
    target = Path(target)
    return Path(tempfile.mkdtemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent))


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Give a temporary path beside ``target`` to fill; rename it over ``target`` on success.

    For writers that take a file name rather than a handle (``torch.onnx.export``). On any
    exception (KeyboardInterrupt included) the temporary file is removed and ``target`` is
    left as it was.

    Args:
        target: the final path; its folder is created if needed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp_name)
        os.chmod(tmp_name, new_file_mode())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_named_path(target: str | Path, *, overwrite: bool = True) -> Iterator[Path]:
    """Give a path with ``target``'s own name in a private folder beside it; move what was
    written there into place on success.

    For writers that pick the format from the file name and may write companion files
    under names of their own (a ``.mhd`` header names its ``.raw`` data file), such as
    nibabel and SimpleITK. Companions are moved first, ``target`` last. On any exception
    the folder and everything in it are removed and nothing beside ``target`` changes.

    Args:
        target: the final path; its folder is created if needed.
        overwrite: replace existing files; when False, a file that already exists under a
            written name is an error (checked before anything is moved).

    Raises:
        InputError: ``overwrite`` is False and a written file's name is taken.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    workdir = temporary_dir(target)
    try:
        yield workdir / target.name
        written = sorted(workdir.iterdir(), key=lambda p: p.name == target.name)  # target last
        for item in written:
            final = target.parent / item.name
            if final.exists() and not overwrite:
                raise InputError(f"{final}: the file already exists; pass overwrite=True.")
        for item in written:
            os.replace(item, target.parent / item.name)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def atomic_file(target: str | Path, *, fsync: bool = False) -> Iterator[BinaryIO]:
    """Open a temporary binary file beside ``target``; rename it over ``target`` on success.

    On any exception (KeyboardInterrupt included) the temporary file is removed and
    ``target`` is left as it was.

    Args:
        target: the final path; its folder is created if needed.
        fsync: flush the data to disk before the rename (checkpoints).
    """
    with atomic_path(target) as tmp, open(tmp, "wb") as handle:
        yield handle
        if fsync:
            handle.flush()
            os.fsync(handle.fileno())


def write_bytes_atomic(target: str | Path, content: bytes) -> Path:
    """Write ``content`` to ``target`` atomically and return the path."""
    with atomic_file(target) as handle:
        handle.write(content)
    return Path(target)


def write_text_atomic(target: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``target`` atomically and return the path."""
    return write_bytes_atomic(target, text.encode("utf-8"))


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON through a temporary file and a rename.

    Args:
        path: destination file.
        data: a JSON-serialisable value.
    """
    target = Path(path)
    write_bytes_atomic(target, (json.dumps(data, indent=2) + "\n").encode("utf-8"))
    return target


def replace_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder ``tmp`` to ``out``, replacing an old ``out`` only now.

    If the final rename fails, the old folder is put back. Meanwhile the old folder waits in
    ``.NAME.HOST-PID.XXXXXXXX.old`` beside ``out`` (see :func:`remove_stale_temporaries`,
    which reports one a killed process left holding it).
    """
    if not out.exists():
        os.replace(tmp, out)
        return
    holder = Path(tempfile.mkdtemp(prefix=_temp_prefix(out), suffix=".old", dir=out.parent))
    old = holder / out.name
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except OSError:
        os.replace(old, out)
        raise
    finally:
        if not old.exists() or out.exists():
            shutil.rmtree(holder, ignore_errors=True)
