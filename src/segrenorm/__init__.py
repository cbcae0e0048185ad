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

from segrenorm._version import __version__

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # errors
    "SegrenormError": "segrenorm.errors",
    "InputError": "segrenorm.errors",
    "CacheError": "segrenorm.errors",
    "ConfigError": "segrenorm.errors",
    # volumes
    "Geometry": "segrenorm.volumes.readwrite",
    "ScalarImage": "segrenorm.volumes.readwrite",
    "LabelMap": "segrenorm.volumes.readwrite",
    "load_image": "segrenorm.volumes.readwrite",
    "load_label": "segrenorm.volumes.readwrite",
    "save_image": "segrenorm.volumes.readwrite",
    "save_label": "segrenorm.volumes.readwrite",
    "find_images": "segrenorm.volumes.readwrite",
    # data
    "simulate_t1": "segrenorm.simulate.benchmark",
    "ScannerProfile": "segrenorm.simulate.scanners",
    "SCANNERS": "segrenorm.simulate.scanners",
    "SubjectRecord": "segrenorm.data.listing",
    "read_listing": "segrenorm.data.listing",
    "prepare_cache": "segrenorm.data.prepare",
    "SliceCache": "segrenorm.data.slice_cache",
    "UnpairedSliceDataset": "segrenorm.data.datasets",
    "BatchStream": "segrenorm.data.batches",
    # configuration, model, training
    "Config": "segrenorm.config.schema",
    "TranslatorKind": "segrenorm.config.schema",
    "load_config": "segrenorm.config.schema",
    "PRESETS": "segrenorm.config.presets",
    "Translator": "segrenorm.models.translator",
    "train": "segrenorm.training.trainer",
    "load_translator": "segrenorm.models.checkpoint",
    "Harmonizer": "segrenorm.harmonize.harmonizer",
    # evaluation
    "EvalData": "segrenorm.evaluate.data",
    "EvaluationConfig": "segrenorm.evaluate.suite",
    "run_evaluation": "segrenorm.evaluate.suite",
    "evaluate_cache": "segrenorm.evaluate.pipeline",
    "write_report": "segrenorm.report.write",
    "compare": "segrenorm.workflows.compare",
    "run_demo": "segrenorm.workflows.demo",
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
    from segrenorm.config.presets import PRESETS
    from segrenorm.config.schema import Config, TranslatorKind, load_config
    from segrenorm.data.batches import BatchStream
    from segrenorm.data.datasets import UnpairedSliceDataset
    from segrenorm.data.listing import SubjectRecord, read_listing
    from segrenorm.data.prepare import prepare_cache
    from segrenorm.data.slice_cache import SliceCache
    from segrenorm.errors import CacheError, ConfigError, InputError, SegrenormError
    from segrenorm.evaluate.data import EvalData
    from segrenorm.evaluate.pipeline import evaluate_cache
    from segrenorm.evaluate.suite import EvaluationConfig, run_evaluation
    from segrenorm.harmonize.harmonizer import Harmonizer
    from segrenorm.models.checkpoint import load_translator
    from segrenorm.models.translator import Translator
    from segrenorm.report.write import write_report
    from segrenorm.simulate.benchmark import simulate_t1
    from segrenorm.simulate.scanners import SCANNERS, ScannerProfile
    from segrenorm.training.trainer import train
    from segrenorm.volumes.readwrite import (
        Geometry,
        LabelMap,
        ScalarImage,
        find_images,
        load_image,
        load_label,
        save_image,
        save_label,
    )
    from segrenorm.workflows.compare import compare
    from segrenorm.workflows.demo import run_demo
