"""segrenorm: unpaired multi-scanner harmonization with segmentation-renormalized generators.

The public API is flat (``import segrenorm as sr``). Names are imported on first use, so
``import segrenorm`` (and ``segrenorm --help``) stays fast and does not load torch.

Example:
    >>> import segrenorm as sr
    >>> sr.load_config("cpu").model.translator.value
    'segrenorm'
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # errors
    "SegrenormError": "segrenorm.errors",
    "InputError": "segrenorm.errors",
    "CacheError": "segrenorm.errors",
    "ConfigError": "segrenorm.errors",
    # volumes
    "Geometry": "segrenorm.io",
    "ScalarImage": "segrenorm.io",
    "LabelMap": "segrenorm.io",
    "load_image": "segrenorm.io",
    "load_label": "segrenorm.io",
    "save_image": "segrenorm.io",
    "save_label": "segrenorm.io",
    "find_images": "segrenorm.io",
    # data
    "simulate_t1": "segrenorm.simulate",
    "ScannerProfile": "segrenorm.scanners",
    "SCANNERS": "segrenorm.scanners",
    "SubjectRecord": "segrenorm.listing",
    "read_listing": "segrenorm.listing",
    "prepare_cache": "segrenorm.cache",
    "SliceCache": "segrenorm.slice_cache",
    "UnpairedSliceDataset": "segrenorm.datasets",
    "BatchStream": "segrenorm.batches",
    # configuration, model, training
    "Config": "segrenorm.config",
    "TranslatorKind": "segrenorm.config",
    "load_config": "segrenorm.config",
    "PRESETS": "segrenorm.presets",
    "Translator": "segrenorm.model",
    "train": "segrenorm.trainer",
    "load_translator": "segrenorm.checkpoint",
    "Harmonizer": "segrenorm.harmonize",
    # evaluation
    "EvalData": "segrenorm.evaluate.data",
    "EvaluationConfig": "segrenorm.evaluate.suite",
    "run_evaluation": "segrenorm.evaluate.suite",
    "evaluate_cache": "segrenorm.evaluate.pipeline",
    "write_report": "segrenorm.report",
    "compare": "segrenorm.compare",
    "run_demo": "segrenorm.demo",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'segrenorm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # static analysers see the real names
    from segrenorm.batches import BatchStream
    from segrenorm.cache import prepare_cache
    from segrenorm.checkpoint import load_translator
    from segrenorm.compare import compare
    from segrenorm.config import Config, TranslatorKind, load_config
    from segrenorm.datasets import UnpairedSliceDataset
    from segrenorm.demo import run_demo
    from segrenorm.errors import CacheError, ConfigError, InputError, SegrenormError
    from segrenorm.evaluate.data import EvalData
    from segrenorm.evaluate.pipeline import evaluate_cache
    from segrenorm.evaluate.suite import EvaluationConfig, run_evaluation
    from segrenorm.harmonize import Harmonizer
    from segrenorm.io import (
        Geometry,
        LabelMap,
        ScalarImage,
        find_images,
        load_image,
        load_label,
        save_image,
        save_label,
    )
    from segrenorm.listing import SubjectRecord, read_listing
    from segrenorm.model import Translator
    from segrenorm.presets import PRESETS
    from segrenorm.report import write_report
    from segrenorm.scanners import SCANNERS, ScannerProfile
    from segrenorm.simulate import simulate_t1
    from segrenorm.slice_cache import SliceCache
    from segrenorm.trainer import train
