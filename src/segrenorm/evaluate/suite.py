"""The evaluation suite: four lenses on harmonized held-out source slices.

1. **Distribution distance.** A multitask autoencoder is trained on both sites' training
   slices; KID (mean ± std over subsets) and FID are computed in its bottleneck features,
   source-vs-target (no harmonization) and harmonized-vs-target per method.
2. **Downstream segmentation** (the paper's Table V). Segmentors trained post hoc on each
   site alone; Dice, IoU and Generalized Dice per class for source→source,
   target→target and target→harmonized for every method (``none`` is target→source).
   The *gap recovery* of a method and class is
   ``(Dice[target→method] - Dice[target→source]) / (Dice[source→source] - Dice[target→source])``.
   Only this lens is repeated, once per segmentor seed (``segmentor_seeds``): every figure
   is the mean over seeds, with its spread beside it (:mod:`segrenorm.evaluate.downstream`).
3. **Robustness** (Fig. 9): MSE and SSIM of ``F(G(x) + n)`` against ``x`` for noise sigma
   0..0.5, for every method with a trained translator.
4. **Paired ground truth**, on simulated benchmarks where held-out subjects exist on both
   scanners: SSIM, PSNR and MAE of harmonized source against the true target slice,
   inside the target's foreground.
5. **Conditioning sensitivity** of each segmentation-renormalised translator: how much
   ``G(x | f(x))`` changes when a slice gets another slice's embedding, over ``|G(x) - x|``,
   inside the foreground (:mod:`segrenorm.evaluate.conditioning`); None for the translators
   that are not conditioned on an embedding.
6. **Lesion-wise fidelity** (:mod:`~segrenorm.evaluate.lesion_lens`), for pocket classes
   (``lesion``, ``IRF``, ``SRF``, ``PED``).
7. **Background artefacts** (:mod:`~segrenorm.evaluate.artefacts`), OCT caches only (manifest
   ``modality`` ``"oct"``): stripe energy in the non-retina background, key ``artefacts``;
   such results also carry ``modality`` and the classical rows left out with their reasons
   (``omitted_baselines``).

:func:`run_evaluation` returns plain JSON-ready numbers and the arrays the report draws.

Example:
    >>> data = EvalData.from_cache("cache/")  # doctest: +SKIP
    >>> methods = {k: MethodInput(v) for k, v in baseline_slices(data).items()}  # doctest: +SKIP
    >>> result = run_evaluation(data, methods, EvaluationConfig())  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segrenorm.errors import ConfigError, InputError
from segrenorm.evaluate.artefacts import OCT, artefact_lens, cache_modality
from segrenorm.evaluate.conditioning import slice_conditioning
from segrenorm.evaluate.data import EvalData
from segrenorm.evaluate.distances import fid, kid
from segrenorm.evaluate.downstream import segmentation_lens
from segrenorm.evaluate.features import (
    AutoencoderConfig,
    extract_features,
    train_autoencoder,
)
from segrenorm.evaluate.lesion_lens import LesionLens
from segrenorm.evaluate.methods import omitted_baselines
from segrenorm.evaluate.paired import paired_scores
from segrenorm.evaluate.robustness import DEFAULT_SIGMAS, noise_sensitivity
from segrenorm.evaluate.segmentor_store import SegmentorStore
from segrenorm.evaluate.segmentors import SegmentorConfig
from segrenorm.models.translator import Translator

__all__ = [
    "EvaluationArtifacts",
    "EvaluationConfig",
    "MethodInput",
    "run_evaluation",
]

log = logging.getLogger(__name__)

#: Called with a short description of each stage as it starts.
StageCallback = Callable[[str], None]
#: Histogram bins of the per-tissue intensity histograms, on the [-1, 1] scale.
HIST_BINS = 64


@dataclass(frozen=True)
class EvaluationConfig:
    """How much work each lens does (the defaults fit a 2-core CPU in about two minutes).

    Args:
        autoencoder: the feature autoencoder's size and training budget.
        segmentor: the post-hoc segmentors' size and training budget.
        sigmas: noise levels of the robustness curves.
        robustness_slices: held-out slices used for the robustness curves (0: all).
        kid_subsets: subsets KID is averaged over.
        kid_subset_size: samples per KID subset (at most half the smaller set is used).
        batch_size: slices per forward pass.
        seed: seeds the autoencoder, the segmentors, the subsets and the noise.
        segmentor_seeds: segmentor pairs trained, with seeds ``segmentor.seed``,
            ``segmentor.seed + 1``, ...; the Dice rows and the gap recovery are their mean,
            with the spread over seeds beside it. Nothing else is repeated.
    """

    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    segmentor: SegmentorConfig = field(default_factory=SegmentorConfig)
    sigmas: tuple[float, ...] = DEFAULT_SIGMAS
    robustness_slices: int = 128
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    batch_size: int = 32
    seed: int = 0
    segmentor_seeds: int = 3

    def __post_init__(self) -> None:
        seeds = self.segmentor_seeds
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise ConfigError(
                f"evaluation segmentor_seeds={seeds!r} must be an integer >= 1: the number of "
                "post-hoc segmentor pairs whose spread the Dice-gap recovery reports (3 or more "
                "to state a spread, 1 for a quick run without one)"
            )
        if len(self.sigmas) < 2 or any(s < 0 for s in self.sigmas):
            raise ConfigError(f"evaluation sigmas {self.sigmas} need at least two values, all >= 0")
        if list(self.sigmas) != sorted(set(self.sigmas)):
            raise ConfigError(f"evaluation sigmas {self.sigmas} must be increasing")
        for name in ("kid_subsets", "kid_subset_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"evaluation {name}={getattr(self, name)} must be at least 1")
        if self.robustness_slices < 0:
            raise ConfigError(
                f"evaluation robustness_slices={self.robustness_slices} must be >= 0 (0: all)"
            )

    @property
    def segmentor_seed_list(self) -> list[int]:
        """The seeds of the segmentor pairs: ``segmentor.seed`` and the next ones."""
        return [self.segmentor.seed + k for k in range(self.segmentor_seeds)]

    def with_seed(self, seed: int) -> EvaluationConfig:
        """The same settings with ``seed`` for every part."""
        return dataclasses.replace(
            self,
            seed=seed,
            autoencoder=dataclasses.replace(self.autoencoder, seed=seed),
            segmentor=dataclasses.replace(self.segmentor, seed=seed),
        )


@dataclass(frozen=True)
class MethodInput:
    """One method to evaluate.

    Args:
        slices: harmonized held-out source slices, row-aligned with ``EvalData.source``.
        translator: the trained translator behind them, for the robustness curves
            (None for classical baselines).
        kind: ``"baseline"``, ``"translator"`` or ``"control"`` (a translator's
            wrong-segmentation row; a label for the report).
    """

    slices: np.ndarray
    translator: Translator | None = None
    kind: str = "baseline"


@dataclass
class EvaluationArtifacts:
    """Arrays the report's figures are drawn from (not written to JSON).

    Args:
        harmonized: each method's harmonized slices.
        target_predictions: the target segmentor's label maps per method (and
            ``"target"`` for the target's own slices).
        sample_rows: positions of the slices shown in the qualitative panel.
    """

    harmonized: dict[str, np.ndarray]
    target_predictions: dict[str, np.ndarray]
    sample_rows: list[int]


def _check_methods(data: EvalData, methods: Mapping[str, MethodInput]) -> None:
    if "none" not in methods:
        raise ConfigError(
            "the evaluation needs the 'none' method (the source as it is): it is the "
            "reference of the KID ratio and of the segmentation gap"
        )
    for name, method in methods.items():
        if method.slices.shape != data.source.images.shape:
            raise InputError(
                f"method {name!r}: harmonized slices {method.slices.shape} do not match the "
                f"{data.source.images.shape} held-out source slices"
            )
        if not np.all(np.isfinite(method.slices)):
            raise InputError(f"method {name!r}: harmonized slices contain NaN or Inf")


def _distribution(
    data: EvalData, methods: Mapping[str, MethodInput], config: EvaluationConfig
) -> dict[str, Any]:
    train_a, _ = data.train_slices("source")
    train_b, _ = data.train_slices("target")
    start = time.perf_counter()
    model = train_autoencoder(train_a, train_b, config.autoencoder)
    seconds = time.perf_counter() - start
    batch = config.batch_size
    target = extract_features(model, data.target.images, batch_size=batch)
    size = max(2, min(config.kid_subset_size, len(target) // 2, len(data.source) // 2))
    per_method: dict[str, dict[str, float]] = {}
    for name, method in methods.items():
        feats = extract_features(model, method.slices, batch_size=batch)
        k = kid(feats, target, n_subsets=config.kid_subsets, subset_size=size, seed=config.seed)
        per_method[name] = {"kid_mean": k["mean"], "kid_std": k["std"], "fid": fid(feats, target)}
    reference = per_method["none"]
    for scores in per_method.values():
        scores["kid_ratio"] = _ratio(scores["kid_mean"], reference["kid_mean"])
        scores["fid_ratio"] = _ratio(scores["fid"], reference["fid"])
    return {
        "feature_dim": int(target.shape[1]),
        "kid_subset_size": size,
        "kid_subsets": config.kid_subsets,
        "autoencoder_seconds": seconds,
        "source_vs_target": dict(reference),
        "methods": per_method,
    }


def _ratio(value: float, reference: float) -> float:
    return float(value / reference) if reference > 0 else float("nan")


def _segmentation(
    data: EvalData,
    methods: Mapping[str, MethodInput],
    config: EvaluationConfig,
    artifacts: EvaluationArtifacts,
    lesions: LesionLens | None = None,
    store: SegmentorStore | None = None,
) -> dict[str, Any]:
    slices = {name: method.slices for name, method in methods.items()}
    results, predictions = segmentation_lens(
        data, slices, config.segmentor, seeds=config.segmentor_seed_list,
        batch_size=config.batch_size, on_seed=None if lesions is None else lesions.add_seed,
        store=store,
    )  # fmt: skip
    artifacts.target_predictions.update(predictions)
    return results


def _robustness(
    data: EvalData, methods: Mapping[str, MethodInput], config: EvaluationConfig
) -> dict[str, Any]:
    chosen = [k for k, m in methods.items() if m.translator is not None]
    if not chosen:
        return {}
    n = len(data.source)
    take = n if config.robustness_slices == 0 else min(n, config.robustness_slices)
    # Evenly spread over the held-out slices, the same for every method.
    rows = np.unique(np.linspace(0, n - 1, take).round().astype(np.int64))
    masks = data.source.masks[rows]
    out = {}
    for name in chosen:
        translator = methods[name].translator
        assert translator is not None
        device = next(translator.parameters()).device
        out[name] = noise_sensitivity(
            translator,
            data.source_stacks(translator.context_slices)[rows],  # (n, k, H, W)
            masks,
            direction="AB",
            sigmas=config.sigmas,
            batch_size=config.batch_size,
            seed=config.seed,
            device=device,
        )
    return out


def _conditioning(
    data: EvalData, methods: Mapping[str, MethodInput], config: EvaluationConfig
) -> dict[str, Any]:
    """Per translator method: its conditioning sensitivity on the held-out source slices."""
    out: dict[str, Any] = {}
    for name, method in methods.items():
        if method.translator is None:
            continue  # classical baselines have no conditioning
        device = next(method.translator.parameters()).device
        figure = slice_conditioning(
            method.translator,
            data.source_stacks(method.translator.context_slices),  # (N, k, H, W)
            data.source.masks,
            direction="AB",  # G: source -> target, as every translator method is applied
            batch_size=config.batch_size,
            seed=config.seed,
            device=device,
        )
        out[name] = None if figure is None else {"direction": data.direction, **figure}
    return out


def _histograms(data: EvalData, methods: Mapping[str, MethodInput]) -> dict[str, Any]:
    """Per-tissue intensity densities of source, target and each method (source labels)."""
    edges = np.linspace(-1.0, 1.0, HIST_BINS + 1)
    out: dict[str, Any] = {"edges": edges.tolist(), "classes": {}}
    for c, cname in enumerate(data.class_names):
        if c == 0:
            continue
        entry = {}
        src_sel = (data.source.labels == c) & data.source.masks
        tgt_sel = (data.target.labels == c) & data.target.masks
        if tgt_sel.any():
            entry["target"] = np.histogram(data.target.images[tgt_sel], edges, density=True)[0]
        for name, method in methods.items():
            if src_sel.any():
                entry[name] = np.histogram(method.slices[src_sel], edges, density=True)[0]
        out["classes"][cname] = {k: v.tolist() for k, v in entry.items()}
    return out


def _sample_rows(data: EvalData, count: int = 1) -> list[int]:
    """Positions of slices with the most foreground, one per subject, for the panels."""
    rows = []
    for positions in list(data.source.subject_rows().values())[:count]:
        fg = data.source.masks[positions].reshape(len(positions), -1).mean(axis=1)
        rows.append(int(positions[int(np.argmax(fg))]))
    return rows


def run_evaluation(
    data: EvalData,
    methods: Mapping[str, MethodInput],
    config: EvaluationConfig | None = None,
    *,
    on_stage: StageCallback | None = None,
    segmentors: str | Path | None = None,
) -> tuple[dict[str, Any], EvaluationArtifacts]:
    """Evaluate every method with the four lenses.

    Args:
        data: the held-out slices of both sites.
        methods: name -> harmonized slices (must include ``"none"``).
        config: budgets and seeds.
        on_stage: progress callback (stage descriptions).
        segmentors: a folder of trained post-hoc segmentors to reuse and add to
            (:mod:`segrenorm.evaluate.segmentor_store`); None trains every one.

    Returns:
        ``(results, artifacts)``: JSON-ready results (see the module docstring) and the
        arrays the report draws.

    Raises:
        ConfigError: no ``"none"`` method.
        InputError: harmonized slices that do not match the held-out slices.
    """
    config = config or EvaluationConfig()
    _check_methods(data, methods)
    store = None if segmentors is None else SegmentorStore(segmentors)
    say = on_stage or (lambda text: log.info("%s", text))
    artifacts = EvaluationArtifacts(
        harmonized={k: m.slices for k, m in methods.items()},
        target_predictions={},
        sample_rows=_sample_rows(data),
    )
    seconds: dict[str, float] = {}
    results: dict[str, Any] = {
        "cache": str(data.cache.path),
        "direction": data.direction,
        "sites": {"source": data.source.name, "target": data.target.name},
        "class_names": list(data.class_names),
        "n_slices": {"source": len(data.source), "target": len(data.target)},
        "n_subjects": {
            "source": len(data.source.subject_rows()),
            "target": len(data.target.subject_rows()),
        },
        "methods": {k: m.kind for k, m in methods.items()},
        "pseudo_labels": _pseudo_labels(data),
    }
    oct_cache = cache_modality(data.cache.manifest) == OCT
    if oct_cache:  # absent on MRI, so MRI results read exactly as before OCT existed
        results.update(modality=OCT, omitted_baselines=omitted_baselines(data))
    slices = {k: m.slices for k, m in methods.items()}
    lesions = LesionLens.for_data(data, slices)  # None without a pocket class
    stages: list[tuple[str, str, Callable[[], Any]]] = [
        ("paired", "paired ground truth", lambda: paired_scores(data, slices)),
        ("histograms", "per-tissue histograms", lambda: _histograms(data, methods)),
        ("distribution", "autoencoder features, KID and FID",
         lambda: _distribution(data, methods, config)),
        ("segmentation", "post-hoc segmentors, Dice and IoU",
         lambda: _segmentation(data, methods, config, artifacts, lesions, store)),
        *([("lesions", "lesion-wise fidelity", lesions.results)] if lesions else []),
        *([("artefacts", "background artefacts", lambda: artefact_lens(data, slices))]
          if oct_cache else []),
        ("robustness", "noise robustness curves", lambda: _robustness(data, methods, config)),
        ("conditioning", "conditioning sensitivity",
         lambda: _conditioning(data, methods, config)),
    ]  # fmt: skip
    for key, text, fn in stages:
        say(text)
        start = time.perf_counter()
        results[key] = fn()
        seconds[key] = time.perf_counter() - start
    results["seconds"] = seconds
    return results, artifacts


def _pseudo_labels(data: EvalData) -> dict[str, str]:
    """``{"source"|"target": method}`` for a held-out site whose label maps are pseudo-labels.

    ``prepare --auto-labels`` records each subject's ``label_source``; Dice on such a site
    measures agreement with the labeller, not with true labels, and the report says so.
    """
    out: dict[str, str] = {}
    for role, site in (("source", data.source), ("target", data.target)):
        held = set(site.subjects.tolist())
        sources = {
            str(s.get("label_source"))
            for s in data.cache.manifest["subjects"]
            if s["site"] == site.site and s["subject"] in held
        }
        auto = sorted(sources - {"file", "None"})
        if auto:
            out[role] = ", ".join(auto)
    return out
