"""Run directories: numbering, finding a config's finished run, and the image grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segrenorm.errors import InputError
from segrenorm.training.images import grid_array, save_image_grid
from segrenorm.training.runlog import create_run_dir, find_finished_run, list_runs


def test_run_dirs_are_numbered_and_found_by_config(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    assert list_runs(runs, "cpu", "segrenorm") == [] and find_finished_run(runs, "cpu", "x") is None
    first = create_run_dir(runs, "cpu", "segrenorm")
    other = create_run_dir(runs, "big-cpu", "segrenorm")  # ends like the first: not a match
    second = create_run_dir(runs, "cpu", "segrenorm")
    assert [p.name for p in (first, other, second)] == [
        "00000-cpu-segrenorm", "00001-big-cpu-segrenorm", "00002-cpu-segrenorm",
    ]  # fmt: skip
    assert list_runs(runs, "cpu", "segrenorm") == [first, second]
    assert find_finished_run(runs, "cpu", "segrenorm") is None
    (first / "final.pt").write_bytes(b"")
    (other / "final.pt").write_bytes(b"")
    assert find_finished_run(runs, "cpu", "segrenorm") == first  # the newest finished one
    (second / "final.pt").write_bytes(b"")
    assert find_finished_run(runs, "cpu", "segrenorm") == second
    assert find_finished_run(runs, "cpu", "cyclegan") is None
    # Names are found the way create_run_dir spells them.
    spaced = create_run_dir(runs, "my run", "semgan")
    (spaced / "final.pt").write_bytes(b"")
    assert find_finished_run(runs, "my run", "semgan") == spaced


def test_create_run_dir_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file"):
        create_run_dir(tmp_path / "f", "cpu", "segrenorm")


def test_image_grid_tiles_images_and_class_maps(tmp_path: Path) -> None:
    images = torch.linspace(-1, 1, 64).reshape(1, 1, 8, 8).repeat(2, 1, 1, 1)
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 4:] = 2
    canvas = grid_array([("image", images), ("labels", labels)], n_classes=3, gap=2)
    assert canvas.shape == (2 * 10 - 2, 2 * 10 - 2, 3)
    assert canvas[0, 0] == pytest.approx([0.0] * 3) and canvas[7, 7] == pytest.approx([1.0] * 3)
    assert np.all(canvas[8:10] == 1.0)  # white gap between rows
    assert not np.allclose(canvas[10, 0], canvas[17, 0])  # class 0 and class 2 differ
    path = save_image_grid(tmp_path / "g" / "grid.png", [("image", images)], n_classes=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="no rows"):
        grid_array([], n_classes=3)
