"""Evaluation: held-out data, classical baselines, the four lenses and their metrics.

Modules: ``data`` (harmonized and target slices to score), ``baselines`` (z-score,
histogram matching, Nyul), ``methods`` (the methods compared), ``metrics`` (MAE, PSNR,
SSIM), ``paired`` (paired-image lens), ``overlap`` and ``segmentors`` (segmentation lens),
``features`` and ``distances`` (feature-distribution lens), ``robustness`` (noise
sensitivity) and ``suite`` (all lenses together). See ``docs/evaluation.md`` for what every
number means. The usual entry point is :func:`segrenorm.workflows.evaluate.evaluate_cache`
(``segrenorm evaluate``).
"""
