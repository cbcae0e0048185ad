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


# --------------------------------------------------------------------------- harmonize fixtures
# Tiny checkpoints and phantom volumes shared by test_harmonize*.py and test_export.py.

from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

#: Site intensity scales stored in the tiny checkpoints: target B is twice as bright.
TINY_SCALING = {
    "A": {"low": 100.0, "high": 900.0, "lower_pct": 0.5, "upper_pct": 99.5, "n_subjects": 3},
    "B": {"low": 200.0, "high": 1800.0, "lower_pct": 0.5, "upper_pct": 99.5, "n_subjects": 3},
}


def tiny_inference_facts(**changes: Any) -> dict[str, Any]:
    """What ``runlog.describe_cache`` stores for a 2 mm axial cache (see harmonize_info)."""
    facts: dict[str, Any] = {
        "slice_axis": "axial", "orientation": "RAS", "spacing": [2.0, 2.0, 2.0],
        "resampled": False, "percentiles": [0.5, 99.5], "use_mask": True, "pad_multiple": 8,
        "site_names": {"A": "1.5T", "B": "3T"}, "scaling": TINY_SCALING,
    }  # fmt: skip
    facts.update(changes)
    return facts


def save_tiny_checkpoint(
    path: Path, *, identity: bool = True, translator: str = "segrenorm", **facts: Any
) -> Path:
    """An untrained tiny translator saved as a real checkpoint (no training step).

    ``identity=True`` keeps the zero-initialised residual output, so G(x) = x up to 1e-3 and
    every harmonized value is predictable; ``False`` gives random, non-trivial networks.
    """
    import torch

    from segrenorm.config.schema import config_from_dict
    from segrenorm.models.checkpoint import build_checkpoint, save_checkpoint
    from segrenorm.models.translator import Translator

    config = config_from_dict(
        {
            "name": "tiny",
            "model": {"translator": translator, "ngf": 4, "ndf": 4, "n_downsample": 2,
                      "n_middle_blocks": 1, "seg_ngf": 4, "seg_depth": 2, "embed_dim": 8,
                      "residual_output": identity, "zero_init_film": identity},
            "data": {"crop_size": 32, "batch_size": 2, "n_classes": 4},
            "run": {"device": "cpu", "amp": "off"},
        }
    )  # fmt: skip
    torch.manual_seed(0)
    model = Translator.from_config(config)
    cache_info = {
        "path": str(path.parent / "no-such-cache"),
        "n_classes": 4,
        "class_names": ["bg", "csf", "gm", "wm"],
        "slice_shape": [32, 32],
        "sites": ["1.5T", "3T"],
        "inference": tiny_inference_facts(**facts),
    }
    payload = build_checkpoint(
        config=config, cache_info=cache_info, model=model, optimizers={}, schedulers={},
        step=0, data_stream={},
    )  # fmt: skip
    return save_checkpoint(payload, path)


def phantom_data(shape: tuple[int, int, int] = (20, 24, 16), seed: int = 0) -> np.ndarray:
    """A head-like ellipsoid with three tissue shells and noise, background near 0."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    radius = np.sqrt(sum(g**2 for g in grid))
    data = np.where(radius < 0.85, 250.0, 3.0)
    data = np.where(radius < 0.7, 520.0, data)
    data = np.where(radius < 0.45, 800.0 + 60 * grid[0], data)
    return (data + 6.0 * rng.standard_normal(shape)).clip(0, None)


@pytest.fixture
def write_phantom(tmp_path: Path) -> Callable[..., Path]:
    """Write a phantom volume: ``write_phantom(name, spacing=2.0, affine=None, dtype='int16')``."""
    import nibabel as nib

    def write(
        name: str = "sub-01.nii.gz",
        *,
        spacing: float | tuple[float, float, float] = 2.0,
        affine: np.ndarray | None = None,
        dtype: str = "int16",
        shape: tuple[int, int, int] = (20, 24, 16),
        folder: Path | None = None,
        seed: int = 0,
    ) -> Path:
        sizes = np.broadcast_to(np.asarray(spacing, dtype=float), (3,))
        if affine is None:
            affine = np.diag([*sizes, 1.0])
            affine[:3, 3] = -0.5 * np.asarray(shape) * sizes
        data = phantom_data(shape, seed).astype(dtype)
        target = (folder or tmp_path / "in") / name
        target.parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, affine), str(target))
        return target

    return write


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``identity`` and ``random`` tiny checkpoints, saved once per session."""
    root = tmp_path_factory.mktemp("tiny-ckpt")
    return {
        "identity": save_tiny_checkpoint(root / "identity.pt", identity=True),
        "random": save_tiny_checkpoint(root / "random.pt", identity=False),
    }


@pytest.fixture(scope="session")
def tiny_kit() -> SimpleNamespace:
    """The helpers above for test modules (conftest is not importable under every mode)."""
    return SimpleNamespace(
        scaling=TINY_SCALING,
        facts=tiny_inference_facts,
        save_checkpoint=save_tiny_checkpoint,
        phantom=phantom_data,
    )


# --------------------------------------------------------------------------- evaluation fixtures
# A tiny two-site study with labels: 3 training subjects per site (disjoint) and 2 held-out
# subjects scanned on both sites (paired truth), cut into 24x24 axial slices.

EVAL_SHAPE = (24, 24, 10)


def eval_volume(
    seed: int, scale: float, gamma: float, noise: float
) -> tuple[np.ndarray, np.ndarray]:
    """A phantom head of three tissue shells (labels 1-3) seen by one scanner."""
    rng = np.random.default_rng(seed)
    grid = np.indices(EVAL_SHAPE).astype(np.float64)
    centre = np.array([11.5, 11.5, 4.5]) + rng.uniform(-1, 1, 3)
    stretch = np.array([1.0, 1.1, 1.6])[:, None, None, None]
    radius = np.sqrt((((grid - centre[:, None, None, None]) / stretch) ** 2).sum(0))
    labels = np.zeros(EVAL_SHAPE, np.uint8)
    labels[radius <= 10] = 1
    labels[radius <= 7.5] = 2
    labels[radius <= 4.5] = 3
    tissue = np.array([0.0, 0.3, 0.6, 1.0])[labels]
    image = scale * tissue**gamma + scale * np.abs(rng.normal(0, noise, EVAL_SHAPE))
    return image, labels


@pytest.fixture(scope="session")
def eval_study(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Volumes, labels and a prepared cache of the tiny two-site study."""
    from segrenorm.data.prepare import SubjectRecord, prepare_cache
    from segrenorm.volumes import readwrite as io
    from segrenorm.volumes.readwrite import Geometry

    root = tmp_path_factory.mktemp("eval-study")
    geometry = Geometry.from_affine(np.diag([2.0, 2.0, 2.0, 1.0]), EVAL_SHAPE)
    records = []
    sites = {"old": (300.0, 1.6, 0.06), "new": (1000.0, 0.8, 0.02)}
    plan = [("s0", "train", "old"), ("s1", "train", "old"), ("s2", "train", "old"),
            ("s3", "train", "new"), ("s4", "train", "new"), ("s5", "train", "new"),
            ("t0", "test", "both"), ("t1", "test", "both")]  # fmt: skip
    for site, (scale, gamma, noise) in sites.items():
        for k, (name, split, where) in enumerate(plan):
            if where not in (site, "both"):
                continue
            image, labels = eval_volume(k, scale, gamma, noise)
            path = root / site / f"{name}.nii.gz"
            img = io.save_image(image.astype(np.float32), path, geometry=geometry)
            lab = io.save_label(labels, root / site / f"{name}_dseg.nii.gz", geometry=geometry)
            records.append(SubjectRecord(name, site, img, lab, split))
    cache = prepare_cache(
        records, root / "cache", class_names=["background", "csf", "gm", "wm"],
        pad_multiple=8, progress=False,
    )  # fmt: skip
    return SimpleNamespace(root=root, cache=cache, records=records)


def tiny_evaluation(**changes: Any) -> Any:
    """Evaluation budgets small enough for tests (a few seconds)."""
    from segrenorm.evaluate.features import AutoencoderConfig
    from segrenorm.evaluate.segmentors import SegmentorConfig
    from segrenorm.evaluate.suite import EvaluationConfig

    base = EvaluationConfig(
        autoencoder=AutoencoderConfig(width=4, depth=2, feature_dim=8, iterations=6,
                                      decay_iterations=2, batch_size=8, crop_size=None),
        segmentor=SegmentorConfig(ngf=4, depth=2, iterations=8, batch_size=4),
        sigmas=(0.0, 0.25, 0.5), robustness_slices=6, kid_subsets=10, batch_size=8,
    )  # fmt: skip
    import dataclasses

    return dataclasses.replace(base, **changes)


@pytest.fixture(scope="session")
def eval_kit() -> SimpleNamespace:
    """Evaluation helpers for test modules."""
    return SimpleNamespace(evaluation=tiny_evaluation, shape=EVAL_SHAPE)
