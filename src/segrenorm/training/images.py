"""Training image grids: real images, translations and class maps tiled into one PNG.

:func:`translation_rows` picks the rows of one training batch, :func:`grid_array` tiles
them and :func:`save_image_grid` writes the PNG that the trainer keeps under
``RUN/images/step-XXXXXX.png``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from segrenorm.atomic import atomic_file
from segrenorm.errors import InputError

__all__ = ["grid_array", "save_image_grid", "translation_rows"]


def grid_array(
    rows: Sequence[tuple[str, torch.Tensor]], *, n_classes: int, max_columns: int = 4, gap: int = 2
) -> np.ndarray:
    """Tile images and class maps into one RGB array (rows x samples), white gaps between.

    Args:
        rows: ``(label, tensor)`` pairs: images ``(B, 1, H, W)`` in [-1, 1] (grey) or class
            maps ``(B, H, W)`` (integer, one fixed colour per class). All share H and W.
        n_classes: number of classes, so a colour means the same class in every grid.
        max_columns: samples shown per row.
        gap: pixels between tiles.

    Returns:
        float array (rows*(H+gap)-gap, columns*(W+gap)-gap, 3) in [0, 1].
    """
    from matplotlib import colormaps

    if not rows:
        raise InputError("no rows to draw in the image grid.")
    columns = max(1, min(max_columns, min(int(t.shape[0]) for _, t in rows)))
    h, w = (int(v) for v in rows[0][1].shape[-2:])
    palette = colormaps["viridis"](np.linspace(0.0, 1.0, max(n_classes, 2)))[:, :3]
    canvas = np.ones((len(rows) * (h + gap) - gap, columns * (w + gap) - gap, 3))
    for r, (label, tensor) in enumerate(rows):
        data = tensor.detach().float().cpu().numpy()
        if tuple(data.shape[-2:]) != (h, w):
            raise InputError(f"row {label!r} is {data.shape[-2:]}, expected {(h, w)}.")
        for c in range(columns):
            if data.ndim == 4:  # (B, k, H, W) image in [-1, 1]: show the centre slice
                plane = data[c, data.shape[1] // 2]
                tile = np.repeat(((np.clip(plane, -1, 1) + 1) / 2)[..., None], 3, axis=2)
            else:  # (B, H, W) class indices
                tile = palette[np.clip(data[c].astype(np.int64), 0, len(palette) - 1)]
            top, left = r * (h + gap), c * (w + gap)
            canvas[top : top + h, left : left + w] = tile
    return canvas


def save_image_grid(
    path: str | Path,
    rows: Sequence[tuple[str, torch.Tensor]],
    *,
    n_classes: int,
    max_columns: int = 4,
    title: str | None = None,
) -> Path:
    """Save :func:`grid_array` as a PNG with the row labels on the left.

    One matplotlib axes shows the whole tiled array: a subplot per tile would cost ~0.5 s
    per grid on a small CPU.

    Args:
        path: destination ``.png``; written through a temporary file.
        rows: ``(label, tensor)`` pairs (see :func:`grid_array`).
        n_classes: number of classes.
        max_columns: samples shown per row.
        title: figure title.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    canvas = grid_array(rows, n_classes=n_classes, max_columns=max_columns)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    scale = 1.2 / max(int(rows[0][1].shape[-2]), 1)  # inches per pixel: tiles ~1.2 in tall
    fig = Figure(figsize=(canvas.shape[1] * scale + 1.0, canvas.shape[0] * scale + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.8 / fig.get_figwidth(), 0.0, 1 - 0.9 / fig.get_figwidth(), 0.95))
    ax.imshow(canvas, interpolation="nearest")
    h = canvas.shape[0] + 2  # rows * (H + gap)
    ax.set_yticks([(r + 0.5) * h / len(rows) - 1 for r in range(len(rows))])
    ax.set_yticklabels([label for label, _ in rows], fontsize=8)
    ax.set_xticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=9)
    with atomic_file(target) as handle:
        fig.savefig(handle, format="png")
    return target


def translation_rows(
    batch: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]
) -> list[tuple[str, torch.Tensor]]:
    """Rows of the training image grid from a batch and ``generator_step`` outputs.

    Real A, G(A), F(G(A)), S(A) and Q(G(A)) (when the translator segments), real B, F(B),
    G(F(B)).

    Args:
        batch: the training batch (``a``, ``b``).
        outputs: ``fake_b``, ``rec_a``, ``fake_a``, ``rec_b`` and optional ``seg_a``,
            ``seg_fake_b``.
    """
    rows = [("real A", batch["a"]), ("G(A)", outputs["fake_b"]), ("F(G(A))", outputs["rec_a"])]
    if "seg_a" in outputs and "seg_fake_b" in outputs:
        rows += [("S(A)", outputs["seg_a"]), ("Q(G(A))", outputs["seg_fake_b"])]
    rows += [("real B", batch["b"]), ("F(B)", outputs["fake_a"]), ("G(F(B))", outputs["rec_b"])]
    return rows
