"""Suite-wide settings: the suite runs under pytest-xdist with one worker per core, so
each worker keeps torch to one intra-op thread (oversubscription makes tiny models ~10x
slower on the 2-core CI machine)."""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)
