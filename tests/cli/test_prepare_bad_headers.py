"""``segrenorm prepare`` on a file whose header declares far more than it holds: refused with
the file named, before anything is allocated, and no cache is left behind."""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from segrenorm.atomic import temporary_dir
from segrenorm.cli import main
from segrenorm.data import prepare
from segrenorm.volumes.images import Geometry
from segrenorm.volumes.readwrite import save_image

SHAPE = (12, 12, 8)


def header_bomb(path: Path, shape: tuple[int, int, int], size: int = 1024) -> Path:
    """A ``size``-byte float32 NIfTI whose header declares ``shape`` (gzip for ``.nii.gz``)."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.float32)
    header.set_data_shape(shape)
    header.set_zooms((1.0, 1.0, 1.0))
    header["vox_offset"] = 352
    raw = header.binaryblock + b"\x00" * (size - len(header.binaryblock))
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def write_site(folder: Path, scale: float) -> None:
    folder.mkdir(parents=True)
    grid = np.indices(SHAPE).astype(np.float64)
    radius = np.sqrt(((grid - 5.5) ** 2).sum(axis=0))
    for k in range(3):
        noise = np.random.default_rng(k).normal(0.0, 5.0, SHAPE)
        data = np.abs(noise) + (radius < 5.0) * 300.0 * scale
        geometry = Geometry.from_affine(np.diag([2.0, 2.0, 2.0, 1.0]), SHAPE)
        save_image(data, folder / f"sub-{folder.name}{k}_T1w.nii.gz", geometry=geometry)


@pytest.mark.parametrize("at", ["b", "a"])
def test_prepare_refuses_a_1kb_file_declaring_4000_cubed_voxels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], at: str
) -> None:
    """At the target site (b) the grid's header read refuses it before any temporary exists;
    at the source site (a) the build refuses it with its temporary cache already written."""
    write_site(tmp_path / "a", 1.0)
    write_site(tmp_path / "b", 3.0)
    bomb = header_bomb(tmp_path / at / f"sub-{at}9_T1w.nii", (4000, 4000, 4000))
    assert bomb.stat().st_size == 1024
    temporaries: list[Path] = []

    def spy(out: Path) -> Path:
        temporaries.append(temporary_dir(out))
        return temporaries[-1]

    monkeypatch.setattr(prepare, "temporary_dir", spy)
    argv = [
        "prepare", "--site-a", str(tmp_path / "a"), "--site-b", str(tmp_path / "b"),
        "--out", str(tmp_path / "cache"), "--bias-correction", "none", "--val-fraction", "0",
        "--quiet",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("segrenorm prepare: error: ")
    assert f"{bomb}: the header declares the grid (4000, 4000, 4000), 64,000,000,000 voxels" in err
    assert "re-export or re-copy the file" in err
    assert len(temporaries) == (1 if at == "a" else 0)
    assert not any(t.exists() for t in temporaries)
    assert not (tmp_path / "cache").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# Loads each file with the address space capped 1 GiB above what the interpreter already
# maps: a loader that allocated the declared voxels (2 to 256 GB) before refusing would fail
# with MemoryError, caught and reported as "truncated or corrupt (MemoryError)" instead of the
# header refusal each case expects.
_CAPPED = textwrap.dedent(
    """
    import resource, sys
    from segrenorm.errors import InputError
    from segrenorm.volumes.readwrite import load_image, load_label, read_geometry

    pages = int(open("/proc/self/statm").read().split()[0])
    limit = pages * resource.getpagesize() + 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    for path in sys.argv[1:]:
        for loader in (read_geometry, load_image, load_label):
            try:
                loader(path)
            except InputError as exc:
                print(exc)
            else:
                print("loaded", path)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS")
def test_refused_before_anything_is_allocated(tmp_path: Path) -> None:
    cases = {
        header_bomb(tmp_path / "cube.nii", (4000, 4000, 4000)): "64,000,000,000 voxels, more than",
        header_bomb(tmp_path / "cube.nii.gz", (4000, 4000, 4000)): "64,000,000,000 voxels",
        header_bomb(tmp_path / "slab.nii", (1000, 1000, 500)): (
            "truncated or corrupt: its header declares 2,000,000,352 bytes of image but the "
            "file holds 1,024"
        ),
        header_bomb(tmp_path / "slab.nii.gz", (1000, 1000, 500)): (
            "declares 2,000,000,352 bytes of image but even fully compressed, the file holds"
        ),
    }
    done = subprocess.run(
        [sys.executable, "-c", _CAPPED, *map(str, cases)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 3 * len(cases)
    for k, (path, expected) in enumerate(cases.items()):
        for line in lines[3 * k : 3 * k + 3]:
            assert line.startswith(f"{path}: ") and expected in line, line
    assert "MemoryError" not in done.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc and RLIMIT_AS")
def test_the_cap_does_catch_an_allocation(tmp_path: Path) -> None:
    """The capped interpreter cannot allocate 2 GB: the test above would see it."""
    probe = _CAPPED.split("for path")[0] + "import numpy\nnumpy.ones(2 * 10**9, numpy.uint8)\n"
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode != 0 and "MemoryError" in done.stderr
