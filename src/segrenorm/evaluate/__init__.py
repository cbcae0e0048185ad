"""Evaluation: held-out data, classical baselines, the four lenses and their metrics.

See ``docs/evaluation.md`` for what every number means. The usual entry point is
:func:`segrenorm.workflows.evaluate.evaluate_cache` (``segrenorm evaluate``); the pieces
are importable on their own.
"""

from __future__ import annotations

from segrenorm.evaluate.baselines import HistogramMatcher, NyulStandardizer, zscore
from segrenorm.evaluate.metrics import mae, psnr, ssim, ssim_map

__all__ = ["HistogramMatcher", "NyulStandardizer", "mae", "psnr", "ssim", "ssim_map", "zscore"]
