"""Tests of segrenorm.atomic: renames only on success, no temp files left, ordinary modes."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from segrenorm.atomic import (
    atomic_file,
    atomic_named_path,
    atomic_path,
    new_file_mode,
    remove_stale_temporaries,
    replace_dir,
    temporary_dir,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from segrenorm.errors import InputError


@pytest.fixture
def umask_027() -> Iterator[int]:
    """Run the test under umask 027 (so the expected mode 0o640 differs from mkstemp's 0o600)."""
    old = os.umask(0o027)
    try:
        yield 0o027
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --------------------------------------------------------------------------- atomic_file


def test_atomic_file_renames_only_when_the_block_ends(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_file(target) as handle:
        handle.write(b"new content")
        handle.flush()
        # Until the block ends, readers still see the old file; the data sits in a sibling.
        assert target.read_bytes() == b"old"
        others = [p for p in tmp_path.iterdir() if p != target]
        assert len(others) == 1 and others[0].read_bytes() == b"new content"
        assert others[0].name.startswith(".out.bin.") and others[0].name.endswith(".tmp")
    assert target.read_bytes() == b"new content"
    assert os.listdir(tmp_path) == ["out.bin"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_file_keeps_the_old_file_on_an_exception(
    tmp_path: Path, error: BaseException
) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(error)), atomic_file(target) as handle:
        handle.write(b"half")
        raise error
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_atomic_file_creates_nothing_when_a_new_target_fails(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "new.bin"
    with pytest.raises(RuntimeError, match="boom"), atomic_file(target) as handle:
        handle.write(b"half")
        raise RuntimeError("boom")
    assert not target.exists()
    assert os.listdir(tmp_path / "sub") == []


def test_atomic_file_with_fsync_creates_folders_and_writes(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "ckpt.pt"
    with atomic_file(target, fsync=True) as handle:
        handle.write(b"\x00\x01\x02")
    assert target.read_bytes() == b"\x00\x01\x02"
    assert os.listdir(target.parent) == ["ckpt.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_new_files_get_0o666_minus_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        expected = new_file_mode()
        with atomic_file(tmp_path / "f.bin") as handle:
            handle.write(b"x")
        with atomic_path(tmp_path / "g.bin") as tmp:
            tmp.write_bytes(b"y")
    finally:
        os.umask(old)
    assert expected == 0o666 & ~umask
    assert _mode(tmp_path / "f.bin") == 0o666 & ~umask
    assert _mode(tmp_path / "g.bin") == 0o666 & ~umask


def test_new_file_mode_leaves_the_umask_unchanged(umask_027: int) -> None:
    assert new_file_mode() == 0o640
    assert os.umask(umask_027) == umask_027  # reading it back: still what the fixture set


# --------------------------------------------------------------------------- atomic_path


def test_atomic_path_gives_a_sibling_and_renames_it(tmp_path: Path) -> None:
    target = tmp_path / "new" / "model.onnx"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name != target.name
        assert tmp.name.startswith(".model.onnx.") and tmp.name.endswith(".tmp")
        assert tmp.is_file() and not target.exists()
        tmp.write_bytes(b"graph")
    assert target.read_bytes() == b"graph"
    assert not tmp.exists()
    assert os.listdir(target.parent) == ["model.onnx"]


def test_atomic_path_removes_the_temp_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous")
    with pytest.raises(ValueError, match="export failed"), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise ValueError("export failed")
    assert not tmp.exists()
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["model.onnx"]


# --------------------------------------------------------------------------- atomic_named_path


def test_atomic_named_path_moves_the_file_and_its_companions(tmp_path: Path) -> None:
    target = tmp_path / "scan.mhd"
    with atomic_named_path(target) as path:
        assert path.name == "scan.mhd"
        assert path.parent != tmp_path and path.parent.parent == tmp_path
        assert path.parent.name.startswith(".scan.mhd.")
        path.write_text("ElementDataFile = scan.raw\n")
        (path.parent / "scan.raw").write_bytes(b"voxels")
        assert sorted(os.listdir(tmp_path)) == [path.parent.name]  # nothing moved yet
    assert target.read_text() == "ElementDataFile = scan.raw\n"
    assert (tmp_path / "scan.raw").read_bytes() == b"voxels"
    assert sorted(os.listdir(tmp_path)) == ["scan.mhd", "scan.raw"]


def test_atomic_named_path_refuses_an_existing_file_without_overwrite(tmp_path: Path) -> None:
    (tmp_path / "scan.raw").write_bytes(b"someone else's data")
    with (
        pytest.raises(InputError) as caught,
        atomic_named_path(tmp_path / "scan.mhd", overwrite=False) as path,
    ):
        path.write_text("header")
        (path.parent / "scan.raw").write_bytes(b"voxels")
    expected = f"{tmp_path / 'scan.raw'}: the file already exists; pass overwrite=True."
    assert str(caught.value) == expected
    # Checked before anything moved: the header did not land either, and no folder is left.
    assert os.listdir(tmp_path) == ["scan.raw"]
    assert (tmp_path / "scan.raw").read_bytes() == b"someone else's data"


def test_atomic_named_path_names_the_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"old")
    with (
        pytest.raises(InputError, match=r"out\.nii\.gz: the file already exists"),
        atomic_named_path(target, overwrite=False) as path,
    ):
        path.write_bytes(b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.nii.gz"]


def test_atomic_named_path_overwrites_by_default(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    target.write_bytes(b"old")
    with atomic_named_path(target, overwrite=True) as path:
        path.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    with atomic_named_path(target) as path:
        path.write_bytes(b"newer")
    assert target.read_bytes() == b"newer"
    assert os.listdir(tmp_path) == ["out.nii.gz"]


def test_atomic_named_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "out.nii.gz"
    with pytest.raises(OSError, match="disk full"), atomic_named_path(target) as path:
        path.write_bytes(b"partial")
        raise OSError("disk full")
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- replace_dir


def _folder(path: Path, content: str) -> Path:
    path.mkdir()
    (path / "report.md").write_text(content)
    return path


def test_replace_dir_moves_a_folder_into_a_free_place(tmp_path: Path) -> None:
    tmp = _folder(tmp_path / ".out.tmp", "new")
    replace_dir(tmp, tmp_path / "out")
    assert (tmp_path / "out" / "report.md").read_text() == "new"
    assert os.listdir(tmp_path) == ["out"]


def test_replace_dir_swaps_an_existing_folder(tmp_path: Path) -> None:
    old = _folder(tmp_path / "out", "old")
    (old / "stale.png").write_bytes(b"png")
    tmp = _folder(tmp_path / ".out.tmp", "new")
    replace_dir(tmp, tmp_path / "out")
    assert sorted(os.listdir(tmp_path / "out")) == ["report.md"]  # the old folder is gone whole
    assert (tmp_path / "out" / "report.md").read_text() == "new"
    assert os.listdir(tmp_path) == ["out"]  # no holder of the old folder is left


def test_replace_dir_puts_the_old_folder_back_when_the_swap_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _folder(tmp_path / "out", "old")
    tmp = _folder(tmp_path / ".out.tmp", "new")
    real_replace = os.replace

    def failing_replace(src: str | Path, dst: str | Path) -> None:
        if Path(src) == tmp:
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        replace_dir(tmp, out)
    monkeypatch.undo()
    assert (out / "report.md").read_text() == "old"
    assert (tmp / "report.md").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == [".out.tmp", "out"]


# --------------------------------------------------------------------------- whole files


def test_write_json_atomic_writes_indented_json_with_a_newline(tmp_path: Path) -> None:
    data = {"b": [1, 2.5, None], "a": {"name": "Zürich", "ok": True}}
    written = write_json_atomic(str(tmp_path / "sub" / "metrics.json"), data)
    assert written == tmp_path / "sub" / "metrics.json"
    text = written.read_text(encoding="utf-8")
    assert text == json.dumps(data, indent=2) + "\n"
    assert text.startswith('{\n  "b": [\n    1,')  # key order kept, two-space indent
    assert json.loads(text) == data
    assert os.listdir(written.parent) == ["metrics.json"]


def test_write_json_atomic_refuses_unserialisable_data_and_keeps_the_file(
    tmp_path: Path,
) -> None:
    target = write_json_atomic(tmp_path / "metrics.json", {"n": 1})
    with pytest.raises(TypeError):
        write_json_atomic(target, {"n": object()})
    assert json.loads(target.read_text()) == {"n": 1}
    assert os.listdir(tmp_path) == ["metrics.json"]


def test_write_text_and_bytes_atomic(tmp_path: Path, umask_027: int) -> None:
    text = write_text_atomic(tmp_path / "report.md", "# Résumé\n")
    raw = write_bytes_atomic(tmp_path / "data.bin", b"\xff\x00")
    assert text.read_bytes() == "# Résumé\n".encode()
    assert raw.read_bytes() == b"\xff\x00"
    assert _mode(text) == _mode(raw) == 0o640


# --------------------------------------------------------------------------- stale temporaries


def test_only_temporaries_of_dead_processes_of_this_machine_are_removed(tmp_path: Path) -> None:
    import subprocess
    import sys

    host = socket_host()  # as temporary names spell it
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    dead_pid = int(dead.stdout)  # reaped by run(): no such process any more
    with atomic_file(tmp_path / "mine.bin") as handle:  # named after this process...
        handle.write(b"x")
        ours = [p.name for p in tmp_path.iterdir() if p.name.startswith(".mine.bin.")]
        assert ours and f".{host}-{os.getpid()}." in ours[0]
        assert remove_stale_temporaries(tmp_path) == []  # ...which is running
    build = temporary_dir(tmp_path / "cache")
    assert build.is_dir() and build.name.startswith(f".cache.{host}-{os.getpid()}.")
    stale_file = tmp_path / f".last.pt.{host}-{dead_pid}.ab12cd_z.tmp"
    stale_dir = tmp_path / f".cache.{host}-{dead_pid}.k3j4h5g6.tmp"
    kept = [
        tmp_path / f".last.pt.{host}-{os.getppid()}.ab12cd34.tmp",  # the parent runs
        tmp_path / f".last.pt.other-machine-{dead_pid}.ab12cd34.tmp",  # maybe alive there
        tmp_path / f".notes.{host}-{dead_pid}.txt",  # not a temporary name
        tmp_path / f"last.pt.{host}-{dead_pid}.ab12cd34.tmp",  # not hidden
    ]
    for path in [stale_file, *kept]:
        path.write_bytes(b"partial")
    (stale_dir / "_work").mkdir(parents=True)
    (stale_dir / "_work" / "0_keep.npy").write_bytes(b"partial")
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_dir])
    assert sorted(tmp_path.iterdir()) == sorted([tmp_path / "mine.bin", build, *kept])
    assert remove_stale_temporaries(tmp_path / "missing") == []


def _dead_pid() -> int:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return int(done.stdout)  # reaped by run(): no such process any more


def test_a_host_name_ending_another_does_not_claim_its_temporaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "b.c")
    dead = _dead_pid()
    kept = [
        tmp_path / f".x.a_b_c-{dead}.ab12cd34.tmp",  # host a.b.c, as now written
        tmp_path / f".x.a.b.c-{dead}.ab12cd34.tmp",  # host a.b.c, dots kept (older names)
        tmp_path / f".x.b.c-{dead}.ab12cd34.tmp",  # b.c unsanitised: not a name we give
    ]
    ours = tmp_path / f".x.b.c-5.b_c-{dead}.ab12cd34.tmp"  # target ".x.b.c-5", host b_c
    for path in [*kept, ours]:
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(tmp_path) == [ours]
    assert sorted(tmp_path.iterdir()) == sorted(kept)
    with atomic_file(tmp_path / "f.bin") as handle:
        handle.write(b"x")
        assert any(p.name.startswith(f".f.bin.b_c-{os.getpid()}.") for p in tmp_path.iterdir())


def test_a_kill_inside_replace_dir_leaves_the_old_folder_reported_not_deleted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging
    import subprocess
    import sys

    _folder(tmp_path / "cache", "old")
    _folder(tmp_path / "new", "new")
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from segrenorm.atomic import replace_dir\n"
        "real = os.replace\n"
        "def dying(src, dst):\n"
        "    if Path(src).name == 'new':\n"
        "        os._exit(9)  # killed between the two renames\n"
        "    real(src, dst)\n"
        "os.replace = dying\n"
        "print(os.getpid(), flush=True)\n"
        "replace_dir(Path(sys.argv[1]) / 'new', Path(sys.argv[1]) / 'cache')\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True)  # fmt: skip
    assert done.returncode == 9, done.stderr
    pid = int(done.stdout)
    holders = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    assert len(holders) == 1 and not (tmp_path / "cache").exists()
    holder = holders[0]
    host = socket_host()
    assert holder.name.startswith(f".cache.{host}-{pid}.")
    assert (holder / "cache" / "report.md").read_text() == "old"
    empty = tmp_path / f".cache.{host}-{_dead_pid()}.zz99yy88.old"
    empty.mkdir()
    with caplog.at_level(logging.WARNING, logger="segrenorm.atomic"):
        assert remove_stale_temporaries(tmp_path) == [empty]
    assert (holder / "cache" / "report.md").read_text() == "old"  # kept
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert f"{holder} holds the folder {tmp_path / 'cache'} was before" in warned[0]
    assert f"move {holder / 'cache'} back to {tmp_path / 'cache'}" in warned[0]
    assert "does not exist" in warned[0]


def socket_host() -> str:
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_-]+", "_", socket.gethostname()) or "host"
