"""Paired ground truth on simulated benchmarks.

Held-out test subjects of ``segrenorm simulate`` exist on both scanners with the same
anatomy, so a harmonized source slice can be compared with the true target-scanner slice
of the same subject and position. Training data stay unpaired; this is evaluation only.

Slices are paired by (subject, slice index) within the cache's test split; metrics are
computed inside the target slice's foreground mask on the [-1, 1] scale of the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from segrenorm.datasets import SliceCache
from segrenorm.errors import CacheError
from segrenorm.evaluate.baselines import HistogramMatcher
from segrenorm.evaluate.metrics import mae, psnr, ssim

__all__ = [
    "PairedSubject",
    "classical_methods",
    "evaluate_paired",
    "paired_test_subjects",
    "translator_method",
]


@dataclass
class PairedSubject:
    """One test subject's aligned slices on both sites, each ``(n, H, W)``."""

    subject: str
    source: np.ndarray
    target: np.ndarray
    mask: np.ndarray
    source_mask: np.ndarray


Method = Callable[[PairedSubject], np.ndarray]


def _site_slices(cache: SliceCache, site: str) -> dict[tuple[str, int], int]:
    """Map (subject, slice index) -> row for the test split of ``site``."""
    slice_index = np.load(cache.path / site / "slices.npy", mmap_mode="r")
    found: dict[tuple[str, int], int] = {}
    for entry in cache.manifest["subjects"]:
        if entry["site"] != site or entry["split"] != "test":
            continue
        for row in range(entry["first_row"], entry["first_row"] + entry["n_slices"]):
            found[(str(entry["subject"]), int(slice_index[row, 1]))] = row
    return found


def paired_test_subjects(cache: SliceCache, *, direction: str = "AB") -> list[PairedSubject]:
    """Test subjects present on both sites, with their common slices aligned.

    Args:
        cache: an opened slice cache.
        direction: ``AB`` pairs site A (source) with B (target); ``BA`` the reverse.

    Raises:
        CacheError: no test subject exists on both sites (the data are not paired).
    """
    src_site, tgt_site = (direction[0], direction[1])
    src_rows, tgt_rows = _site_slices(cache, src_site), _site_slices(cache, tgt_site)
    common = sorted(set(src_rows) & set(tgt_rows))
    if not common:
        raise CacheError(
            f"{cache.path}: no test subject has slices on both sites, so there is no paired "
            "ground truth. Paired metrics need a simulated benchmark (segrenorm simulate)."
        )
    by_subject: dict[str, list[tuple[int, int]]] = {}
    for subject, index in common:
        by_subject.setdefault(subject, []).append(
            (src_rows[(subject, index)], tgt_rows[(subject, index)])
        )
    out = []
    for subject, pairs in by_subject.items():
        s_rows = np.array([p[0] for p in pairs])
        t_rows = np.array([p[1] for p in pairs])
        out.append(
            PairedSubject(
                subject=subject,
                source=np.asarray(cache.images(src_site)[s_rows], dtype=np.float32),
                target=np.asarray(cache.images(tgt_site)[t_rows], dtype=np.float32),
                mask=np.asarray(cache.masks(tgt_site)[t_rows]).astype(bool),
                source_mask=np.asarray(cache.masks(src_site)[s_rows]).astype(bool),
            )
        )
    return out


def _train_foreground(cache: SliceCache, site: str) -> list[np.ndarray]:
    """Foreground intensities of each training subject of ``site``."""
    values = []
    images, masks = cache.images(site), cache.masks(site)
    for entry in cache.manifest["subjects"]:
        if entry["site"] != site or entry["split"] != "train" or entry["n_slices"] == 0:
            continue
        rows = slice(entry["first_row"], entry["first_row"] + entry["n_slices"])
        values.append(np.asarray(images[rows])[np.asarray(masks[rows]).astype(bool)])
    return values


def classical_methods(cache: SliceCache, *, direction: str = "AB") -> dict[str, Method]:
    """No harmonization, histogram matching, and denoise-then-histogram-match.

    Histogram matching is learned on the target site's training subjects.
    """
    matcher = HistogramMatcher().fit(_train_foreground(cache, direction[1]))

    def identity(p: PairedSubject) -> np.ndarray:
        return p.source

    def hist_match(p: PairedSubject) -> np.ndarray:
        return matcher.apply(p.source, p.source_mask)

    def denoise_hist_match(p: PairedSubject) -> np.ndarray:
        smooth = ndimage.gaussian_filter(p.source, (0.0, 0.8, 0.8)).astype(np.float32)
        return matcher.apply(np.where(p.source_mask, smooth, p.source), p.source_mask)

    return {
        "none": identity,
        "histogram_matching": hist_match,
        "denoise+histogram_matching": denoise_hist_match,
    }


def translator_method(
    translate: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> Method:
    """Wrap a slice translator ``(B, 1, H, W) -> (B, 1, H, W)`` as a paired method.

    Background outside the source foreground stays background (-1).
    """

    def run(p: PairedSubject) -> np.ndarray:
        out = np.empty_like(p.source)
        with torch.inference_mode():
            for start in range(0, len(p.source), batch_size):
                chunk = torch.from_numpy(p.source[start : start + batch_size, None]).to(device)
                out[start : start + batch_size] = translate(chunk)[:, 0].float().cpu().numpy()
        return np.where(p.source_mask, out, -1.0).astype(np.float32)

    return run


def evaluate_paired(
    subjects: list[PairedSubject], methods: Mapping[str, Method]
) -> dict[str, dict[str, float]]:
    """Mean SSIM, PSNR and MAE over subjects for every method, inside the target mask."""
    results: dict[str, dict[str, float]] = {}
    for name, method in methods.items():
        scores: dict[str, list[float]] = {"ssim": [], "psnr": [], "mae": []}
        for p in subjects:
            pred = method(p)
            scores["ssim"].append(ssim(pred, p.target, data_range=2.0, mask=p.mask))
            scores["psnr"].append(psnr(pred, p.target, data_range=2.0, mask=p.mask))
            scores["mae"].append(mae(pred, p.target, mask=p.mask))
        results[name] = {k: float(np.mean(v)) for k, v in scores.items()}
    return results
