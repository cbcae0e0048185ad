"""The OCT preview: one subject's central B-scan on every vendor, fluid pockets outlined.

:func:`save_oct_preview` draws one row per vendor, the scan beside its clean render where there
is one. Every panel is one raster in millimetres (:func:`bscan_panel`) spanning the widest field
of view and the deepest scan, so the same eye lines up across vendors of different grids, and
the outlines are painted on that raster, so they stay visible whatever the vendor's voxel count
(a Cirrus-like B-scan has 1024 depth rows, far more than a panel's pixels).
:func:`segrenorm.simulate.preview.preview_subject` reads a ``simulate oct`` folder into it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segrenorm.atomic import atomic_file
from segrenorm.errors import InputError
from segrenorm.simulate.retina import FLUID_CLASSES

__all__ = ["FLUID_COLOURS", "OUTSIDE_COLOUR", "OctView", "bscan_panel", "save_oct_preview"]

#: Outline colours (RGB in [0, 1]) of the fluid classes IRF, SRF, PED (labels 1-3).
FLUID_COLOURS: dict[int, tuple[float, float, float]] = {
    1: (1.0, 0.23, 0.19),
    2: (0.2, 0.78, 0.35),
    3: (1.0, 0.8, 0.0),
}
# Panels lie beyond a vendor's field of view where another vendor's reaches further: a pale
# blue no grey level can be mistaken for (white would read as bright tissue).
OUTSIDE_COLOUR = (0.8, 0.88, 1.0)
# Raster of one B-scan panel (depth rows, lateral columns): fewer pixels than the panel's axes
# take on the figure, so no raster pixel (and no outline) is lost when the PNG is drawn.
_PANEL_PIXELS = (200, 320)


@dataclass(frozen=True)
class OctView:
    """One vendor's render of a subject, for :func:`save_oct_preview`.

    Args:
        name: The vendor, the row title.
        scan: (X, Y, Z) volume: A-scan position, depth (vitreous at ``y = 0``), B-scan index.
        labels: (X, Y, Z) fluid labels 0-3 on the scan's grid.
        spacing: Voxel size in mm along (x, y, z).
        clean: The speckle-free render on the same grid, or None.
    """

    name: str
    scan: np.ndarray
    labels: np.ndarray
    spacing: tuple[float, float, float]
    clean: np.ndarray | None = None


def _raster_index(n: int, step: float, extent: float, pixels: int, *, centred: bool) -> np.ndarray:
    """The voxel index under each of ``pixels`` raster pixels spread over ``extent`` mm, -1
    where the pixel lies off the ``n`` voxels of ``step`` mm (centred: both grids centred on
    the fovea; else both start at the top of the grid)."""
    centres = (np.arange(pixels) + 0.5) * (extent / pixels)
    start = 0.0
    if centred:
        centres -= extent / 2
        start = -n * step / 2
    index = np.floor((centres - start) / step).astype(np.int64)
    index[(index < 0) | (index >= n)] = -1
    return index


def bscan_panel(
    bscan: np.ndarray,
    labels: np.ndarray,
    spacing: tuple[float, float],
    *,
    extent_mm: tuple[float, float],
    pixels: tuple[int, int] = _PANEL_PIXELS,
) -> np.ndarray:
    """One B-scan as an RGB raster in millimetres, its fluid pockets outlined per class.

    The raster spans ``extent_mm`` (width, depth): the lateral centre of the B-scan at the
    raster's centre, its first depth row at the top. Each raster pixel shows the voxel under
    its centre (nearest neighbour), grey-scaled between the 1st and 99.5th percentiles of the
    B-scan; a two-pixel band along the inside of each pocket is painted in its class's
    :data:`FLUID_COLOURS`; pixels off the B-scan are :data:`OUTSIDE_COLOUR`.

    Args:
        bscan: (X, Y) intensities: A-scan position, depth.
        labels: (X, Y) fluid labels 0-3 of the same B-scan.
        spacing: Voxel size in mm along (x, y).
        extent_mm: The raster's (width, depth) in mm, at least the B-scan's own.
        pixels: The raster's (rows, columns).

    Returns:
        (rows, columns, 3) float RGB in [0, 1]: depth down, lateral across.

    Raises:
        InputError: If the labels' shape differs from the B-scan's.
    """
    if labels.shape != bscan.shape:
        raise InputError(
            f"preview: a B-scan of shape {bscan.shape} has labels of shape {labels.shape}; "
            "the fluid labels must lie on the scan's grid"
        )
    from scipy import ndimage

    n_x, n_y = bscan.shape
    rows = _raster_index(n_y, spacing[1], extent_mm[1], pixels[0], centred=False)
    cols = _raster_index(n_x, spacing[0], extent_mm[0], pixels[1], centred=True)
    inside = (rows >= 0)[:, None] & (cols >= 0)[None, :]
    values = np.asarray(bscan, np.float64)[cols[None, :], rows[:, None]]  # (rows, columns)
    low, high = np.percentile(bscan, (1.0, 99.5))
    grey = np.clip((values - low) / max(float(high - low), 1e-12), 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    lab = np.where(inside, np.asarray(labels)[cols[None, :], rows[:, None]], 0)
    for k, colour in FLUID_COLOURS.items():
        pocket = lab == k
        # The band inside the edge: the pocket's own pixels stay visible beneath it.
        edge = pocket & ~ndimage.binary_erosion(pocket, iterations=2)
        rgb[edge] = colour
    rgb[~inside] = OUTSIDE_COLOUR
    return rgb


def save_oct_preview(views: Sequence[OctView], out_png: str | Path, *, title: str = "") -> Path:
    """Write the central B-scan of one subject on every vendor, fluid outlined.

    One row per vendor, the scan on the left and its clean render (where any vendor has one)
    on the right; every panel on one millimetre raster spanning the widest field of view and
    the deepest scan, so one eye lines up across grids (depth is stretched, as OCT viewers do).

    Args:
        views: The vendors' renders, source first.
        out_png: Output PNG path; written atomically.
        title: Figure title.

    Returns:
        The PNG path.

    Raises:
        InputError: If no view is given, or a view's volumes do not share one 3D grid.
    """
    if not views:
        raise InputError("preview: no OCT views given; pass at least one vendor's render")
    for view in views:
        parts = {"scan": view.scan, "labels": view.labels, "clean render": view.clean}
        shapes = {name: v.shape for name, v in parts.items() if v is not None}
        if len(view.scan.shape) != 3 or len(set(shapes.values())) > 1:
            named = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
            raise InputError(
                f"preview: {view.name}'s volumes have the shapes {named}; they must share one "
                "3D grid"
            )
    extent = (
        max(v.scan.shape[0] * v.spacing[0] for v in views),
        max(v.scan.shape[1] * v.spacing[1] for v in views),
    )
    columns = 2 if any(v.clean is not None for v in views) else 1
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    fig, axes = plt.subplots(
        len(views), columns, figsize=(4.6 * columns, 3.0 * len(views) + 0.6), squeeze=False
    )
    for r, view in enumerate(views):
        centre = view.scan.shape[2] // 2  # the fovea's B-scan: every grid is centred on it
        spacing = (view.spacing[0], view.spacing[1])
        panels = [("scan", view.scan), ("clean", view.clean)][:columns]
        for c, (kind, volume) in enumerate(panels):
            axis = axes[r, c]
            if volume is None:
                axis.set_axis_off()
                continue
            rgb = bscan_panel(
                volume[:, :, centre], view.labels[:, :, centre], spacing, extent_mm=extent
            )
            axis.imshow(
                rgb,
                extent=(-extent[0] / 2, extent[0] / 2, extent[1], 0.0),
                aspect="auto",
                interpolation="nearest",
            )
            axis.set_title(f"{view.name} {kind}, B-scan {centre}", fontsize=10)
            axis.set_xlabel("lateral (mm)", fontsize=8)
            axis.set_ylabel("depth (mm)", fontsize=8)
            axis.tick_params(labelsize=7)
    handles = [Patch(color=colour, label=FLUID_CLASSES[k]) for k, colour in FLUID_COLOURS.items()]
    handles.append(Patch(color=OUTSIDE_COLOUR, label="outside the field of view"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_file(out) as handle:
            fig.savefig(handle, format="png", dpi=110)
    finally:
        plt.close(fig)
    return out
