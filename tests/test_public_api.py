"""The flat public API: ``sr.<name>`` is the documented object whatever was imported before."""

from __future__ import annotations

import enum
import importlib
import inspect
import pkgutil
import subprocess
import sys

import segrenorm as sr

#: What each public name is. Written by hand: a name that changes kind is an API change.
KINDS: dict[str, str] = {
    "SegrenormError": "exception", "InputError": "exception", "CacheError": "exception",
    "ConfigError": "exception", "CheckpointError": "exception",
    "Geometry": "class", "ScalarImage": "class", "LabelMap": "class",
    "load_image": "function", "load_label": "function", "save_image": "function",
    "save_label": "function", "find_images": "function",
    "simulate_t1": "function", "ScannerProfile": "class", "SCANNERS": "mapping",
    "SubjectRecord": "class", "read_listing": "function", "prepare_cache": "function",
    "SliceCache": "class", "UnpairedSliceDataset": "class", "BatchStream": "class",
    "Config": "class", "TranslatorKind": "enum", "load_config": "function",
    "PRESETS": "mapping", "Translator": "class", "train": "function",
    "load_translator": "function", "Harmonizer": "class", "HarmonizeOptions": "class",
    "export_model": "function", "EvalData": "class", "EvaluationConfig": "class",
    "run_evaluation": "function", "evaluate_cache": "function", "write_report": "function",
    "compare": "function", "run_demo": "function",
}  # fmt: skip


def kind_of(value: object) -> str:
    if inspect.isclass(value) and issubclass(value, BaseException):
        return "exception"
    if inspect.isclass(value) and issubclass(value, enum.Enum):
        return "enum"
    if inspect.isclass(value):
        return "class"
    if inspect.isfunction(value):
        return "function"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__


def test_every_name_keeps_its_kind_after_every_submodule_is_imported() -> None:
    for info in pkgutil.walk_packages(sr.__path__, prefix="segrenorm."):
        if not info.name.endswith("__main__"):  # running it is `python -m segrenorm`
            importlib.import_module(info.name)
    assert set(sr.__all__) == {"__version__", *KINDS}
    for name, kind in KINDS.items():
        value = getattr(sr, name)
        assert kind_of(value) == kind, f"sr.{name} is {kind_of(value)}, not {kind}"
        defining = importlib.import_module(sr._EXPORTS[name])
        assert value is getattr(defining, name), name
        if kind in ("class", "exception", "enum", "function"):
            assert value.__module__ == sr._EXPORTS[name], f"{name} is re-exported"
            assert (value.__doc__ or "").strip(), f"sr.{name} has no docstring"


def test_no_public_name_is_also_a_submodule() -> None:
    # Importing segrenorm.X sets the attribute X on the package, hiding a public X.
    children = {info.name for info in pkgutil.iter_modules(sr.__path__)}
    assert children & set(sr.__all__) == set()


def test_version_is_one_string() -> None:
    from importlib import metadata

    from segrenorm._version import __version__

    assert sr.__version__ is __version__
    assert metadata.version("segrenorm") == __version__


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        sr.not_a_thing  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "not_a_thing" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("expected AttributeError")


def test_import_and_help_do_not_load_torch() -> None:
    code = "import sys, segrenorm.cli as c; c.build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_submodule_import_does_not_replace_a_public_function() -> None:
    code = "import segrenorm.workflows.compare, segrenorm as sr; print(sr.compare.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "compare"
