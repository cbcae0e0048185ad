from __future__ import annotations

import subprocess
import sys

import segrenorm as sr


def test_every_exported_name_resolves() -> None:
    for name in sr.__all__:
        assert getattr(sr, name) is not None, name


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
