"""segrenorm: unpaired multi-scanner harmonization with segmentation-renormalized generators.

The public API is flat (``import segrenorm as sr``). Names are imported on first use, so
``import segrenorm`` (and ``segrenorm --help``) stays fast and does not load torch.

The list of public names is written once, as the imports below ``if TYPE_CHECKING:``: type
checkers read them as ordinary imports, and at run time :func:`_exports` reads the same
statements from this file to learn which module defines each name.

Example:
    >>> import segrenorm as sr
    >>> sr.load_config("cpu").model.translator.value
    'segrenorm'
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from segrenorm._version import __version__


def _exports() -> dict[str, str]:
    """Public name -> defining module, read from this file's ``if TYPE_CHECKING:`` imports."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    exports: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name):
            if node.test.id != "TYPE_CHECKING":
                continue
            for stmt in node.body:
                if isinstance(stmt, ast.ImportFrom) and stmt.module:
                    exports.update((alias.name, stmt.module) for alias in stmt.names)
    return exports


_EXPORTS = _exports()
__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'segrenorm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # the public names, one import each (see the module docstring)
    from segrenorm.config.load import load_config
    from segrenorm.config.presets import PRESETS
    from segrenorm.config.schema import Config, TranslatorKind
    from segrenorm.data.batches import BatchStream
    from segrenorm.data.datasets import UnpairedSliceDataset
    from segrenorm.data.listing import SubjectRecord, read_listing
    from segrenorm.data.prepare import prepare_cache
    from segrenorm.data.slice_cache import SliceCache
    from segrenorm.errors import (
        CacheError,
        CheckpointError,
        ConfigError,
        InputError,
        SegrenormError,
    )
    from segrenorm.evaluate.data import EvalData
    from segrenorm.evaluate.suite import EvaluationConfig, run_evaluation
    from segrenorm.export.exporter import export_model
    from segrenorm.harmonize.harmonizer import HarmonizeOptions, Harmonizer
    from segrenorm.models.checkpoint import load_translator
    from segrenorm.models.translator import Translator
    from segrenorm.report.write import write_report
    from segrenorm.simulate.benchmark import simulate_t1
    from segrenorm.simulate.scanners import SCANNERS, ScannerProfile
    from segrenorm.training.trainer import train
    from segrenorm.volumes.images import Geometry, LabelMap, ScalarImage
    from segrenorm.volumes.paths import find_images
    from segrenorm.volumes.readwrite import load_image, load_label, save_image, save_label
    from segrenorm.workflows.compare import compare
    from segrenorm.workflows.demo import run_demo
    from segrenorm.workflows.evaluate import evaluate_cache
