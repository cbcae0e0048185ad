"""The evaluation report's figures, rendered to PNG with matplotlib's Agg backend.

* :func:`qualitative_panel` (the paper's Figs. 6-8): one row per method: the source input,
  its harmonized version, the target segmentor's labels over it, and the target scan.
* :func:`sensitivity_curves` (Fig. 9a): SSIM and MSE of ``F(G(x) + n)`` against ``x``.
* :func:`tissue_histograms`: intensity densities per tissue, before and after.
* :func:`kid_bars`: KID of each method against the target, with its spread over subsets.

Each function takes plain arrays or the JSON-ready results and writes one PNG atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from segrenorm.atomic import atomic_file

__all__ = ["kid_bars", "qualitative_panel", "sensitivity_curves", "tissue_histograms"]

# Transparent background, then up to seven class colours (CSF, GM, WM first).
_CLASS_COLOURS = ("#3b75af", "#ef8636", "#f5e15a", "#519e3e", "#c53a32", "#8d69b8", "#84584e")


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, out: str | Path, dpi: int = 100) -> Path:
    plt = _pyplot()
    path = Path(out)
    try:
        with atomic_file(path) as handle:
            fig.savefig(handle, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return path


def _overlay(image: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """RGB image in [0, 1] with classes 1.. tinted over the grey image."""
    from matplotlib.colors import to_rgb

    grey = np.clip((image + 1.0) / 2.0, 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    for c in range(1, n_classes):
        colour = np.asarray(to_rgb(_CLASS_COLOURS[(c - 1) % len(_CLASS_COLOURS)]))
        sel = labels == c
        rgb[sel] = 0.45 * rgb[sel] + 0.55 * colour
    return rgb


def qualitative_panel(
    out: str | Path,
    *,
    source: np.ndarray,
    target: np.ndarray,
    harmonized: Mapping[str, np.ndarray],
    predictions: Mapping[str, np.ndarray],
    class_names: Sequence[str],
    titles: tuple[str, str] = ("source", "target"),
    oct: bool = False,
) -> Path:
    """One row per method: input, harmonized, target segmentor overlay, target scan.

    Args:
        out: the PNG path.
        source: (H, W) source slice in [-1, 1].
        target: (H, W) target slice (the paired truth where there is one).
        harmonized: method -> (H, W) harmonized slice.
        predictions: method -> (H, W) labels from the target segmentor.
        class_names: class names, background first.
        titles: names of the source and target sites.
        oct: B-scans: depth grows downward (the vitreous on top, as OCT is read); otherwise
            the slice's second axis points up (RAS).
    """
    plt = _pyplot()
    from matplotlib.patches import Patch

    origin = "upper" if oct else "lower"

    names = list(harmonized)
    fig, axes = plt.subplots(len(names), 4, figsize=(9.2, 2.35 * len(names) + 0.5), squeeze=False)
    heads = (f"input ({titles[0]})", "harmonized", "target segmentor", f"{titles[1]} scan")
    for r, name in enumerate(names):
        row = (
            source,
            harmonized[name],
            _overlay(harmonized[name], predictions[name], len(class_names)),
            target,
        )
        for c, image in enumerate(row):
            ax = axes[r, c]
            if image.ndim == 2:
                ax.imshow(image.T, cmap="gray", vmin=-1, vmax=1, origin=origin)
            else:
                ax.imshow(np.transpose(image, (1, 0, 2)), origin=origin)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(heads[c], fontsize=9)
        axes[r, 0].set_ylabel(name, fontsize=9)
    handles = [
        Patch(color=_CLASS_COLOURS[(c - 1) % len(_CLASS_COLOURS)], label=class_names[c])
        for c in range(1, len(class_names))
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0, 0.035, 1, 1))
    return _save(fig, out)


def sensitivity_curves(out: str | Path, robustness: Mapping[str, Mapping[str, Any]]) -> Path:
    """SSIM and MSE of the noisy cycle's reconstruction against noise sigma, per method.

    Args:
        out: the PNG path.
        robustness: method -> ``{"sigma", "ssim", "mse"}`` (from the evaluation results).
    """
    plt = _pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, curve in robustness.items():
        left.plot(curve["sigma"], curve["ssim"], marker="o", ms=3, label=name)
        right.plot(curve["sigma"], curve["mse"], marker="o", ms=3, label=name)
    left.set(
        xlabel="noise sigma on G(x)", ylabel="SSIM(F(G(x)+n), x)", title="SSIM (higher is better)"
    )
    right.set(
        xlabel="noise sigma on G(x)", ylabel="MSE(F(G(x)+n), x)", title="MSE (lower is better)"
    )
    for ax in (left, right):
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def tissue_histograms(
    out: str | Path, histograms: Mapping[str, Any], *, methods: Sequence[str]
) -> Path:
    """Intensity density per tissue: target, source as is, and each method.

    Args:
        out: the PNG path.
        histograms: ``{"edges": [...], "classes": {name: {series: densities}}}``.
        methods: series to draw besides ``target`` (``none`` is drawn dashed).
    """
    plt = _pyplot()
    classes = histograms["classes"]
    edges = np.asarray(histograms["edges"])
    centres = (edges[1:] + edges[:-1]) / 2
    fig, axes = plt.subplots(1, max(1, len(classes)), figsize=(3.6 * max(1, len(classes)), 3.2))
    axes = np.atleast_1d(axes)
    for ax, (cname, series) in zip(axes, classes.items(), strict=False):
        if "target" in series:
            ax.plot(centres, series["target"], color="black", lw=2.2, label="target")
        for name in methods:
            if name not in series:
                continue
            style = {"ls": "--", "color": "grey"} if name == "none" else {"lw": 1.2}
            ax.plot(centres, series[name], label=name, **style)
        ax.set(title=cname, xlabel="intensity ([-1, 1] scale)", yticks=[])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("density")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


def kid_bars(out: str | Path, distribution: Mapping[str, Any]) -> Path:
    """KID against the target per method (bar: mean over subsets, line: std).

    Args:
        out: the PNG path.
        distribution: the evaluation's ``distribution`` results.
    """
    plt = _pyplot()
    methods = distribution["methods"]
    names = list(methods)
    means = [methods[n]["kid_mean"] for n in names]
    stds = [methods[n]["kid_std"] for n in names]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2.5, 3.2))
    colours = ["grey" if n == "none" else "#3b75af" for n in names]
    ax.bar(range(len(names)), means, yerr=stds, color=colours, capsize=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="KID vs target (lower is better)", title="distribution distance")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)
