"""Suite-wide settings and the shared factories of tiny volumes, caches, configs and runs.

The suite runs under pytest-xdist with one worker per core, so each worker keeps torch to
one intra-op thread (oversubscription makes tiny models ~10x slower on the 2-core CI
machine). Test modules reach the factories through fixtures: ``tiny_kit`` (sizes, configs,
cache and checkpoint writers, phantoms), ``eval_kit``, ``tiny_cache``, ``tiny_checkpoints``,
``write_phantom`` and ``eval_study`` (conftest is not importable under every import mode).
"""

from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(1)


import json  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from types import SimpleNamespace  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

if TYPE_CHECKING:
    from segrenorm.config.schema import Config

# --------------------------------------------------------------------------- tiny runs
# The sizes, settings and hand-written cache every training, checkpoint and workflow test
# starts from: a training step takes a few tens of ms on one thread.

#: Network sizes of every tiny translator in the suite.
TINY_MODEL: dict[str, Any] = {
    "ngf": 4, "ndf": 4, "n_downsample": 2, "n_middle_blocks": 1, "seg_ngf": 4,
    "seg_depth": 2, "embed_dim": 8,
}  # fmt: skip
#: ``--set`` overrides of a 3 + 1 step CPU training run with the tiny networks.
TINY_TRAIN_SET = [
    *[f"model.{key}={value}" for key, value in TINY_MODEL.items()],
    "data.crop_size=32", "data.batch_size=2", "optim.iterations=3", "optim.decay_iterations=1",
    "run.checkpoint_every=0", "run.image_every=0", "run.device=cpu",
]  # fmt: skip
#: ``--eval-set`` overrides: evaluation lenses with budgets of a few iterations.
TINY_EVAL_SET = [
    "autoencoder.width=4", "autoencoder.depth=2", "autoencoder.feature_dim=8",
    "autoencoder.iterations=3", "autoencoder.decay_iterations=0", "autoencoder.batch_size=8",
    "autoencoder.crop_size=32", "segmentor.ngf=4", "segmentor.depth=2",
    "segmentor.iterations=3", "robustness_slices=4", "kid_subsets=5",
]  # fmt: skip
#: Classes and slice size of :func:`write_tiny_cache`.
TINY_CLASSES = 4
TINY_SLICE = (40, 40)


def flags(option: str, values: list[str]) -> list[str]:
    """``["--set", "a=1", "--set", "b=2"]`` from ``option="--set"`` and ``["a=1", "b=2"]``."""
    return [part for value in values for part in (option, value)]


def tiny_config(translator: str = "segrenorm", **sections: dict[str, Any]) -> Config:
    """ngf 4, two downsamplings, 32x32 crops, batch 2, 4 + 2 steps; ``sections`` update it."""
    from segrenorm.config.build import config_from_dict

    data: dict[str, Any] = {
        "name": "tiny",
        "model": {"translator": translator, **TINY_MODEL},
        "data": {"crop_size": 32, "batch_size": 2, "n_classes": TINY_CLASSES},
        "optim": {"iterations": 4, "decay_iterations": 2, "warmup_iterations": 2},
        "run": {"log_every": 1, "image_every": 3, "checkpoint_every": 2, "keep_checkpoints": 1,
                "device": "cpu", "amp": "off"},
    }  # fmt: skip
    for section, values in sections.items():
        data[section] = {**data[section], **values}
    return config_from_dict(data)


def write_cache(
    root: Path,
    sites: dict[str, dict[str, np.ndarray]],
    subjects: list[dict[str, Any]],
    *,
    class_names: list[str],
    n_folds: int = 1,
) -> Path:
    """Write a slice cache by hand, following docs/cache-format.md.

    Args:
        root: the cache folder (created).
        sites: site key -> ``images``, ``labels``, ``masks`` and ``slices`` arrays.
        subjects: the manifest's subject entries.
        class_names: class names, background first.
        n_folds: the split's fold count.
    """
    for site, arrays in sites.items():
        (root / site).mkdir(parents=True)
        for name, array in arrays.items():
            np.save(root / site / f"{name}.npy", array)
    manifest = {
        "format_version": 1, "complete": True, "created": "2026-01-01T00:00:00Z",
        "segrenorm_version": "0.1.0", "sites": {"A": "1.5T", "B": "3T"},
        "n_classes": len(class_names), "class_names": class_names, "has_labels": True,
        "slice_axis": "axial", "canonical_orientation": "RAS", "spacing": [1.0, 1.0, 1.0],
        "slice_shape": list(next(iter(sites.values()))["images"].shape[1:]), "pad_multiple": 8,
        "percentiles": [0.5, 99.5], "min_foreground": 0.0,
        "split": {"seed": 0, "test_fraction": 0.3, "n_folds": n_folds}, "subjects": subjects,
    }  # fmt: skip
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def write_tiny_cache(root: Path, n_classes: int = TINY_CLASSES, n: int = 6) -> Path:
    """A training cache of concentric classes, ``n`` 40x40 slices per site, all ``train``."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: TINY_SLICE[0], : TINY_SLICE[1]]
    sites, subjects = {}, []
    for site, offset in (("A", 0.0), ("B", 0.3)):
        labels = np.zeros((n, *TINY_SLICE), np.uint8)
        for i in range(n):
            radius = np.hypot(yy - 20 - i % 3, xx - 20)
            for c in range(1, n_classes):
                labels[i][radius < 20 - 4 * c] = c
        noise = 0.05 * rng.standard_normal(labels.shape)
        images = np.where(labels > 0, -0.6 + 0.4 * labels + offset + noise, -1.0)
        sites[site] = {
            "images": np.clip(images, -1, 1).astype(np.float32),
            "labels": labels,
            "masks": (labels > 0).astype(np.uint8),
            "slices": np.stack([np.zeros(n), np.arange(n)], 1).astype(np.int32),
        }
        subjects.append(
            {"subject": f"sub-{site}", "site": site, "image": f"/x/{site}.nii.gz", "label": None,
             "split": "train", "fold": 0, "shape": [*TINY_SLICE, n], "n_slices": n,
             "first_row": 0}
        )  # fmt: skip
    names = [f"c{k}" for k in range(n_classes)]
    return write_cache(root, sites, subjects, class_names=names)


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`write_tiny_cache`, written once per session: read it, never change it."""
    return write_tiny_cache(tmp_path_factory.mktemp("tiny-cache") / "cache")


# --------------------------------------------------------------------------- harmonize fixtures
# Tiny checkpoints and phantom volumes shared by the harmonize, export and CLI tests.

#: Site intensity scales stored in the tiny checkpoints: target B is twice as bright.
TINY_SCALING = {
    "A": {"low": 100.0, "high": 900.0, "lower_pct": 0.5, "upper_pct": 99.5, "n_subjects": 3},
    "B": {"low": 200.0, "high": 1800.0, "lower_pct": 0.5, "upper_pct": 99.5, "n_subjects": 3},
}


def tiny_inference_facts(**changes: Any) -> dict[str, Any]:
    """What ``runlog.describe_cache`` stores for a 2 mm axial cache (see data/facts.py)."""
    facts: dict[str, Any] = {
        "slice_axis": "axial", "orientation": "RAS", "spacing": [2.0, 2.0, 2.0],
        "resampled": False, "percentiles": [0.5, 99.5], "use_mask": True, "pad_multiple": 8,
        "site_names": {"A": "1.5T", "B": "3T"}, "scaling": TINY_SCALING,
    }  # fmt: skip
    facts.update(changes)
    return facts


def save_tiny_checkpoint(
    path: Path,
    *,
    identity: bool = True,
    translator: str = "segrenorm",
    context_slices: int = 1,
    **facts: Any,
) -> Path:
    """An untrained tiny translator saved as a real checkpoint (no training step).

    ``identity=True`` keeps the zero-initialised residual output, so G(x) = x up to 1e-3 and
    every harmonized value is predictable; ``False`` gives random, non-trivial networks.
    ``context_slices`` > 1 makes it a 2.5-D translator of k-slice stacks.
    """
    import torch

    from segrenorm.config.build import config_from_dict
    from segrenorm.models.translator import Translator
    from segrenorm.training.state import build_checkpoint, save_checkpoint

    config = config_from_dict(
        {
            "name": "tiny",
            "model": {"translator": translator, **TINY_MODEL, "residual_output": identity,
                      "film_init_std": 0.0 if identity else 0.03},
            "data": {"crop_size": 32, "batch_size": 2, "n_classes": 4,
                     "context_slices": context_slices},
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


def anatomy_phantom(shape: tuple[int, int, int] = (40, 40, 24)) -> Any:
    """A simulate ``Anatomy``: WM core, GM shell and CSF rim in an empty background, 2 mm."""
    from segrenorm.simulate.anatomy import Anatomy

    grid = np.indices(shape).astype(np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    radius = np.sqrt(sum((grid[i] - centre[i]) ** 2 for i in range(3)))
    mask = (radius < 10).astype(np.float32)
    wm = (radius < 6).astype(np.float32)
    gm = ((radius >= 6) & (radius < 8.5)).astype(np.float32)
    t1 = 0.3 * mask + 0.3 * gm + 0.7 * wm
    return Anatomy.from_template(t1, gm, wm, mask, np.diag([2.0, 2.0, 2.0, 1.0]))


@pytest.fixture
def seeded_torch() -> Iterator[None]:
    """One intra-op thread and seed 0 for a test; the thread count is restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_kit() -> SimpleNamespace:
    """The helpers above for test modules (conftest is not importable under every mode)."""
    return SimpleNamespace(
        scaling=TINY_SCALING,
        facts=tiny_inference_facts,
        save_checkpoint=save_tiny_checkpoint,
        phantom=phantom_data,
        anatomy=anatomy_phantom,
        model=TINY_MODEL,
        config=tiny_config,
        write_cache=write_cache,
        cache=write_tiny_cache,
        train_set=TINY_TRAIN_SET,
        eval_set=TINY_EVAL_SET,
        flags=flags,
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
    from segrenorm.data.listing import SubjectRecord
    from segrenorm.data.prepare import prepare_cache
    from segrenorm.volumes.images import Geometry
    from segrenorm.volumes.readwrite import save_image, save_label

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
            img = save_image(image.astype(np.float32), path, geometry=geometry)
            lab = save_label(labels, root / site / f"{name}_dseg.nii.gz", geometry=geometry)
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


def paired_by_hand(
    data: Any, slices: np.ndarray, truth: np.ndarray | None = None
) -> dict[str, float]:
    """Paired scores as docs/evaluation.md defines them, computed here with scikit-image.

    Each row of ``slices`` (aligned with ``data.source``) is compared with the target slice
    of the same subject and slice index: SSIM (Gaussian window sigma 1.5, K1 0.01, K2 0.03,
    data range 2), PSNR and MAE inside the brain (target labels > 0), pooled over a subject's
    slices, then averaged over subjects. ``truth`` (row-aligned with ``data.target``, e.g.
    the clean target renders) replaces the target scans as the reference.
    """
    from skimage.metrics import structural_similarity

    reference = data.target.images if truth is None else truth

    pairs = zip(data.target.subjects, data.target.index, strict=True)
    target_row = {(str(s), int(i)): k for k, (s, i) in enumerate(pairs)}
    pooled: dict[str, list[np.ndarray]] = {}
    for k, (subject, index) in enumerate(zip(data.source.subjects, data.source.index, strict=True)):
        t = target_row.get((str(subject), int(index)))
        if t is None:
            continue
        truth, pred = reference[t].astype(np.float64), slices[k].astype(np.float64)
        inside = data.target.labels[t] > 0  # the label-defined brain both sites share
        _, ssim_map = structural_similarity(
            truth, pred, data_range=2.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False, full=True,
        )  # fmt: skip
        error = pred - truth
        pooled.setdefault(str(subject), []).append(
            np.stack([ssim_map[inside], error[inside] ** 2, np.abs(error[inside])])
        )
    scores = []
    for parts in pooled.values():
        ssim, squared, absolute = np.concatenate(parts, axis=1)
        mse = squared.mean()
        scores.append(
            [ssim.mean(), 10 * np.log10(4.0 / mse) if mse > 0 else np.inf, absolute.mean()]
        )
    ssim, psnr, mae = (float(v) for v in np.mean(scores, axis=0))
    count = sum(len(parts) for parts in pooled.values())
    return {"ssim": ssim, "psnr": psnr, "mae": mae, "n_subjects": len(pooled), "n_slices": count}


@pytest.fixture(scope="session")
def eval_kit() -> SimpleNamespace:
    """Evaluation helpers for test modules."""
    return SimpleNamespace(evaluation=tiny_evaluation, shape=EVAL_SHAPE, paired=paired_by_hand)


# --------------------------------------------------------------------------- three sites
# A tiny study of three sites (siteA, siteB, siteC in cache order), each with two training
# subjects and one test subject of its own, prepared into one cache; the listing CSV names
# every volume. Used by the pair-view, pairs-workflow and harmonize-by-site tests.

THREE_SITES = {"siteA": (1.0, 0.02), "siteB": (1.6, 0.05), "siteC": (0.6, 0.08)}
THREE_SITE_SHAPE = (32, 32, 6)


@pytest.fixture(scope="session")
def three_sites(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Volumes, listing and prepared cache (2 mm, 32x32 axial slices, no N4) of three sites."""
    from segrenorm.data.listing import SubjectRecord
    from segrenorm.data.prepare import prepare_cache
    from segrenorm.volumes.bias import NO_BIAS_CORRECTION
    from segrenorm.volumes.images import Geometry
    from segrenorm.volumes.readwrite import save_image, save_label

    root = tmp_path_factory.mktemp("three-sites")
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    geometry = Geometry.from_affine(affine, THREE_SITE_SHAPE)
    grid = np.indices(THREE_SITE_SHAPE).astype(np.float64)
    records, lines = [], ["subject,site,image,label"]
    for s, (site, (gamma, noise)) in enumerate(THREE_SITES.items()):
        for k, split in enumerate(("train", "train", "test")):
            rng = np.random.default_rng([s, k])
            centre = np.array([15.5, 15.5, 2.5]) + rng.uniform(-1, 1, 3)
            stretch = np.array([1.0, 1.0, 0.3])[:, None, None, None]
            radius = np.sqrt((((grid - centre[:, None, None, None]) / stretch) ** 2).sum(0))
            labels = np.digitize(-radius, [-13.0, -9.0, -5.0]).astype(np.uint8)  # 0..3 inward
            tissue = np.array([0.0, 0.3, 0.6, 1.0])[labels]
            image = 800.0 * tissue**gamma + 800.0 * np.abs(rng.normal(0, noise, labels.shape))
            name = f"{site}-s{k}"
            img = save_image(image.astype(np.float32), root / site / f"{name}.nii.gz",
                             geometry=geometry)  # fmt: skip
            lab = save_label(labels, root / site / f"{name}_dseg.nii.gz", geometry=geometry)
            records.append(SubjectRecord(name, site, img, lab, split))
            lines.append(f"{name},{site},{img},{lab}")
    csv = root / "study.csv"
    csv.write_text("\n".join(lines) + "\n")
    cache = prepare_cache(
        records, root / "cache", class_names=["background", "csf", "gm", "wm"],
        pad_multiple=8, val_fraction=0.0, bias_correction=NO_BIAS_CORRECTION,
        min_foreground=0.01, spacing=(2.0, 2.0, 2.0), progress=False,
    )  # fmt: skip
    return SimpleNamespace(root=root, cache=cache, csv=csv, records=records,
                           sites=tuple(THREE_SITES))  # fmt: skip
