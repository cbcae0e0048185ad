"""Tests for TorchScript and ONNX export: equal to PyTorch within 1e-4, dynamic batch."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from segrenorm.atomic import new_file_mode
from segrenorm.cli import main
from segrenorm.errors import ConfigError, InputError, SegrenormError
from segrenorm.export.exporter import TOLERANCE, check_torchscript, export_model, export_torchscript
from segrenorm.models.checkpoint import load_translator
from segrenorm.models.inference import ConditionedGenerator


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_export_both_formats_match_pytorch(
    tiny_checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    ckpt = tiny_checkpoints["random"]
    checks = export_model(ckpt, tmp_path / "exp", direction="BA", shape=(24, 40))
    assert [c.fmt for c in checks] == ["torchscript", "onnx"]
    assert all(c.ok and c.max_abs_diff <= TOLERANCE for c in checks)
    # Independent check: run both files on a batch size never seen and compare to Q -> F.
    translator, _ = load_translator(ckpt)
    x = torch.linspace(-1, 1, 5 * 24 * 40).reshape(5, 1, 24, 40).sin()
    want = translator.translate(x, "BA").numpy()
    assert np.abs(want - x.numpy()).max() > 0.05  # the random model is not the identity
    scripted = torch.jit.load(str(tmp_path / "exp" / "translator_BA.pt"))
    np.testing.assert_allclose(scripted(x).detach().numpy(), want, atol=TOLERANCE)
    session = ort.InferenceSession(str(tmp_path / "exp" / "translator_BA.onnx"))
    (got,) = session.run(None, {"image": x.numpy()})
    np.testing.assert_allclose(got, want, atol=TOLERANCE)
    info = json.loads((tmp_path / "exp" / "translator_BA.json").read_text())
    assert info["target_site"] == "1.5T" and info["target_scaling"]["high"] == 900.0
    assert info["input"]["shape"] == ["batch", 1, 24, 40] and info["checks"]["onnx"]["ok"]
    crop = load_translator(ckpt)[1].data.crop_size  # harmonize tiles when a crop < a side
    assert info["tiles"]["harmonize_tile"] == (crop if 0 < crop < 40 else None)
    pre = info["preprocessing"]
    assert (pre["modality"], pre["image_resampling"], pre["background"]) == ("mri", "linear", -1.0)
    with pytest.raises(InputError, match=r"translator_BA\.pt.*already exist.*--overwrite"):
        export_model(ckpt, tmp_path / "exp", direction="BA", shape=(24, 40))


def test_export_options_are_validated(tiny_checkpoints: dict[str, Path], tmp_path: Path) -> None:
    ckpt = tiny_checkpoints["random"]
    with pytest.raises(ConfigError, match=r"export format\(s\) \['tflite'\] unknown"):
        export_model(ckpt, tmp_path, formats=["tflite"])
    with pytest.raises(ConfigError, match=r"export shape 30x32 is not a multiple.*stride 4"):
        export_model(ckpt, tmp_path, shape=(30, 32))
    with pytest.raises(ConfigError, match="direction 'AA' is unknown"):
        export_model(ckpt, tmp_path, direction="AA")


def test_cyclegan_exports_its_generator_alone(tmp_path: Path, tiny_kit: SimpleNamespace) -> None:
    ckpt = tiny_kit.save_checkpoint(tmp_path / "cg.pt", identity=False, translator="cyclegan")
    translator, _ = load_translator(ckpt)
    module = ConditionedGenerator(translator, "AB")
    assert module.segmenter is None and module.extractor is None
    export_torchscript(module, tmp_path / "cg_script.pt", (16, 16))
    assert stat.S_IMODE((tmp_path / "cg_script.pt").stat().st_mode) == new_file_mode()
    check = check_torchscript(module, tmp_path / "cg_script.pt", (16, 16), batch_sizes=(4,))
    assert check.ok


def test_export_command(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["export", "--model", str(tiny_checkpoints["identity"]), "--out", str(tmp_path)]
    assert main([*argv, "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "onnx:" in out and "translator_AB.onnx" in out and "ok" in out
    assert (tmp_path / "translator_AB.onnx").is_file()
    assert not (tmp_path / "translator_AB.pt").exists()
    assert main([*argv, "--format", ","]) == 2
    assert "--format is empty" in capsys.readouterr().err


def test_a_failing_onnx_export_is_reported(
    tiny_checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Exporting the operator 'aten::foo' is not supported\nmore")

    monkeypatch.setattr(torch.onnx, "export", refuse)
    with pytest.raises(SegrenormError, match=r"ONNX export to .*translator_AB\.onnx failed.*foo"):
        export_model(tiny_checkpoints["random"], tmp_path, formats=["onnx"])
    assert not list(tmp_path.glob("*.onnx*"))  # no half-written file left behind
