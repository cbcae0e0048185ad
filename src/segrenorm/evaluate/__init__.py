"""Evaluation: paired ground truth metrics and classical baselines."""

from __future__ import annotations

from segrenorm.evaluate.baselines import HistogramMatcher, zscore
from segrenorm.evaluate.metrics import mae, psnr, ssim, ssim_map

__all__ = ["HistogramMatcher", "mae", "psnr", "ssim", "ssim_map", "zscore"]
