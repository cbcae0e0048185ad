"""Tests for ``benchmarks/eager_reference.py``: the eager reference computes segrenorm's function.

With weights copied from a translator (perturbed, so that FiLM heads, affine norms and the
zero-started tail all matter), every reference network's forward equals the package's to
1e-5, the inference graph equals ``ConditionedGenerator``, and one reference iteration gives
the losses and parameter gradients of ``generator_step`` / ``discriminator_step``. A test
also checks that the comparison notices a changed leaky-ReLU slope, so it can fail.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.utils.flop_counter import FlopCounterMode

from segrenorm.config.load import load_config
from segrenorm.config.schema import Config
from segrenorm.errors import ConfigError, InputError
from segrenorm.models.inference import ConditionedGenerator
from segrenorm.models.translator import Translator
from segrenorm.training.objective import discriminator_step, generator_step
from segrenorm.training.optim import build_optimizers

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("segrenorm", "s-cyclegan", "cyclegan")
TOL = 1e-5
GRAD_TOL = 2e-5


def _load(name: str) -> ModuleType:
    # The benchmark scripts import each other as top-level modules, as when run as scripts.
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / f"benchmarks/{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ref_mod = _load("eager_reference")
nets_mod = _load("eager_reference_nets")
train_speed = _load("train_speed")


def tiny(kind: str, *extra: str) -> Config:
    """The cpu preset shrunk to 4-wide networks on 32x32 batches of 2, identity loss on."""
    overrides = [
        f"model.translator={kind}",
        "model.ngf=4",
        "model.ndf=4",
        "model.seg_ngf=4",
        "model.embed_dim=8",
        "data.crop_size=32",
        "data.batch_size=2",
        "loss.identity=5.0",
        *extra,
    ]
    return load_config("cpu", overrides=overrides)


def perturbed(config: Config, seed: int = 0) -> Translator:
    """A translator whose every parameter is moved off its (partly zero or unit) start."""
    torch.manual_seed(seed)
    model = Translator.from_config(config)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            film = name.split(".")[-2] in ("gamma", "beta")  # FiLM heads well away from 0
            p.add_(torch.randn(p.shape, generator=gen) * (0.3 if film else 0.05))
    return model.train()


def max_abs(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape
    return float((a - b).detach().abs().max())


def images(config: Config, n: int = 2, side: int = 32, seed: int = 3) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    k = config.data.context_slices
    return torch.rand(n, k, side, side + 8, generator=gen) * 2 - 1  # (n, k, side, side + 8)


@pytest.mark.parametrize("kind", KINDS)
def test_every_network_matches_with_copied_weights(kind: str) -> None:
    config = tiny(kind)
    model = perturbed(config)
    ref = ref_mod.reference_of(model, config)
    x = images(config)
    emb = torch.randn(2, config.model.embed_dim, generator=torch.Generator().manual_seed(4))
    cond = emb if kind == "segrenorm" else None
    for name in ("gen_ab", "gen_ba"):
        ours, theirs = getattr(model, name)(x, cond), getattr(ref, name)(x, cond)
        assert max_abs(ours, theirs) < TOL, name
        assert float((ours - x).detach().abs().mean()) > 0.05  # the perturbed tail moves the output
    if kind != "cyclegan":
        for name in ("seg_a", "seg_b"):
            assert max_abs(getattr(model, name)(x), getattr(ref, name)(x)) < TOL, name
    if kind == "segrenorm":
        probs = torch.softmax(model.seg_a(x), dim=1)
        for name in ("extractor_ab", "extractor_ba"):
            assert max_abs(getattr(model, name)(probs), getattr(ref, name)(probs)) < TOL
    # Training mode: each forward runs one power iteration; equal vectors stay equal.
    for name in ("disc_a", "disc_b"):
        for _ in range(2):
            assert max_abs(getattr(model, name)(x), getattr(ref, name)(x)) < TOL, name


def test_film_path_and_its_switch_are_copied() -> None:
    config = tiny("segrenorm")
    model = perturbed(config)
    x = images(config)
    emb = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))
    with_film = model.gen_ab(x, emb)
    model.set_film_enabled(False)
    ref = ref_mod.reference_of(model, config)
    without = model.gen_ab(x, emb)
    assert max_abs(without, ref.gen_ab(x, emb)) < TOL
    assert max_abs(with_film, without) > 1e-2  # FiLM changes the output: the path is live
    assert max_abs(model.gen_ab(x, -emb), without) == 0.0  # disabled: emb is ignored


@pytest.mark.parametrize(
    ("kind", "extra"), [(k, ()) for k in KINDS] + [("segrenorm", ("data.context_slices=3",))]
)
def test_inference_graph_matches_conditioned_generator(kind: str, extra: tuple[str, ...]) -> None:
    config = tiny(kind, *extra)
    model = perturbed(config).eval()
    ref = ref_mod.reference_of(model, config)
    # 36 x 44 slices: the extractor's stages meet odd sides and pool adaptively.
    x = images(config, n=3, side=36)
    for direction in ("AB", "BA"):
        with torch.inference_mode():
            ours = ConditionedGenerator(model, direction).eval()(x)
        theirs = ref_mod.reference_translate(ref, x, direction)
        assert theirs.shape == (3, 1, 36, 44)
        assert max_abs(ours, theirs) < TOL, direction


def _grads(named: list[tuple[str, torch.nn.Parameter]]) -> dict[str, Tensor]:
    return {n: p.grad.clone() for n, p in named if p.grad is not None}


def _close(ours: Tensor, theirs: Tensor) -> bool:
    # Relative to the gradient's norm: float32 rounding alone reaches 8e-6 here (FiLM biases,
    # whose gradients are sums that nearly cancel); a slope of 0.19 or a FiLM scale off by
    # 1e-3 in the package gives errors far above GRAD_TOL.
    return float((ours - theirs).norm()) <= GRAD_TOL * max(float(ours.norm()), 1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_one_iteration_gives_the_same_losses_and_gradients(kind: str) -> None:
    config = tiny(kind)
    model = perturbed(config)
    model.consistency_scale = 0.5  # the warm-up factor is copied too
    ref = ref_mod.reference_of(model, config)
    batch = train_speed.make_batch(config, torch.device("cpu"))

    total, terms, outputs = generator_step(model, batch)
    total.backward()
    disc_names = {n for n, _ in model.named_parameters() if n.startswith("disc_")}
    ours = {n: g for n, g in _grads(list(model.named_parameters())).items() if n not in disc_names}
    d_total, d_terms = discriminator_step(model, batch, outputs)
    model.zero_grad(set_to_none=True)
    d_total.backward()
    ours |= {n: g for n, g in _grads(list(model.named_parameters())).items() if n in disc_names}

    losses = ref_mod.reference_iteration(
        ref, ref_mod.reference_optimizers(ref, config.optim), batch
    )
    theirs = _grads(list(ref.named_parameters()))

    assert set(losses.terms) == set(terms) | set(d_terms)
    for name, value in (terms | d_terms).items():
        assert abs(float(value) - float(losses.terms[name])) <= TOL * abs(float(value)), name
    assert abs(float(total.detach()) - float(losses.generator)) <= TOL * float(total.detach())
    d_value = float(d_total.detach())
    assert abs(d_value - float(losses.discriminator)) <= TOL * d_value
    assert set(theirs) == set(ours) == {n for n, _ in model.named_parameters()}
    bad = [n for n in ours if not _close(ours[n], theirs[n])]
    assert not bad, bad


def test_optimisers_match_the_package_settings() -> None:
    config = tiny("segrenorm", "optim.lr_disc=3e-4", "optim.beta1=0.3")
    model = perturbed(config)
    ref = ref_mod.reference_of(model, config)
    ours, theirs = (
        build_optimizers(model, config.optim),
        ref_mod.reference_optimizers(ref, config.optim),
    )
    assert set(ours) == set(theirs) == {"seg", "gen", "disc"}
    names = {id(p): n for n, p in model.named_parameters()}
    ref_names = {id(p): n for n, p in ref.named_parameters()}
    for group in ours:
        a, b = ours[group].param_groups[0], theirs[group].param_groups[0]
        assert (a["lr"], a["betas"], a["eps"]) == (b["lr"], b["betas"], b["eps"])
        assert [names[id(p)] for p in a["params"]] == [ref_names[id(p)] for p in b["params"]]
    assert theirs["disc"].param_groups[0]["lr"] == 3e-4


def test_comparison_detects_a_changed_slope(monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny("segrenorm")
    model = perturbed(config)
    x = images(config)
    emb = torch.randn(2, 8, generator=torch.Generator().manual_seed(6))
    monkeypatch.setattr(nets_mod, "SLOPE", 0.19)
    ref = ref_mod.reference_of(model, config)
    assert max_abs(model.gen_ab(x, emb), ref.gen_ab(x, emb)) > 100 * TOL
    assert max_abs(model.seg_a(x), ref.seg_a(x)) > 100 * TOL


def test_copy_refuses_another_configuration() -> None:
    model = perturbed(tiny("segrenorm"))
    with pytest.raises(InputError, match=r"cannot copy a segrenorm translator .*own Config"):
        ref_mod.reference_of(model, tiny("segrenorm", "model.ngf=8"))
    with pytest.raises(InputError, match=r"4 classes.*cannot copy.*3 classes"):
        ref_mod.reference_of(perturbed(tiny("segrenorm", "data.n_classes=3")), tiny("segrenorm"))


def test_copy_refuses_a_changed_layout() -> None:
    config = tiny("cyclegan")
    model = perturbed(config)
    model.gen_ab.tail = torch.nn.Conv2d(4, 1, 3, padding=1, bias=False)  # a key disappears
    message = r"(?s)does not match the eager reference's layout.*gen_ab\.tail\.bias"
    with pytest.raises(InputError, match=message):
        ref_mod.reference_of(model, config)


def test_bad_direction_and_batch_are_refused() -> None:
    config = tiny("s-cyclegan")
    ref = ref_mod.reference_of(perturbed(config), config)
    with pytest.raises(ConfigError, match=r"direction='XY' is unknown: use 'AB' or 'BA'"):
        ref_mod.reference_translate(ref, images(config), "XY")
    batch = {"a": images(config), "b": images(config)}
    with pytest.raises(InputError, match=r"lacks \['a_label', 'b_label'\].*s-cyclegan"):
        ref_mod.reference_generator_loss(ref, batch)


def test_harmonize_speed_times_ours_against_the_reference() -> None:
    harmonize_speed = _load("harmonize_speed")
    data = np.zeros((20, 24, 10), dtype=np.float32)
    data[4:16, 4:20, 3:7] = 100.0  # foreground slices z = 3..6, intensity 0..100
    x = harmonize_speed.slice_batch(data, 3, (32, 32))
    assert x.shape == (3, 1, 32, 32)
    # The middle of slices 3..6 is index 2 (z = 5): batch z = 4, 5, 6.
    assert torch.equal(
        x[:, 0, :20, :24], torch.from_numpy(np.moveaxis(data[:, :, 4:7], -1, 0) / 50 - 1)
    )
    assert float(x[:, :, 20:].max()) == -1.0 and float(x[:, :, :, 24:].max()) == -1.0

    config = tiny("segrenorm")
    model = perturbed(config).eval()
    fake = SimpleNamespace(
        primary=SimpleNamespace(translator=model, config=config),
        options=SimpleNamespace(direction="BA", seg_batch=2),
    )
    r = harmonize_speed.time_against_reference(fake, x, 2, False, 10.0)
    best = min(r["ours_batch_all_seconds"]), min(r["reference_batch_all_seconds"])
    assert r["ours_batch_seconds"] == best[0] and r["reference_batch"] == 3
    assert r["speedup_vs_reference"] == pytest.approx(best[1] / best[0], rel=2e-3)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        ConditionedGenerator(model, "BA", seg_chunk=2)(x)
    assert r["ours_batch_gflop"] == round(counter.get_total_flops() / 1e9, 1)
    line = harmonize_speed.describe_reference(r)
    assert "vs eager reference: batch of 3 slices" in line and "2 alternating pairs" in line


def test_harmonize_speed_refuses_zero_reference_rounds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _load("harmonize_speed").main(["--reference-rounds", "0"])
    assert "--reference-rounds=0 must be >= 1" in capsys.readouterr().err
