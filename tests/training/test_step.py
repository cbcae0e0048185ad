"""The step runner: per-direction halves, two-thread execution, and the allocator setting."""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from segrenorm.config.schema import LossConfig, ModelConfig, TranslatorKind
from segrenorm.errors import ConfigError, InputError
from segrenorm.models.translator import Translator
from segrenorm.training.objective import (
    discriminator_half,
    discriminator_step,
    frozen_discriminators,
    generator_half,
    generator_step,
)
from segrenorm.training.step import StepRunner, keep_freed_memory
from segrenorm.training.trainer import train

N_CLASSES = 3
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("seeded_torch")


def make_model(
    kind: TranslatorKind = TranslatorKind.SEGRENORM, identity: float = 0.5
) -> Translator:
    cfg = ModelConfig(
        translator=kind,
        ngf=4,
        ndf=4,
        n_downsample=2,
        n_middle_blocks=1,
        seg_ngf=4,
        seg_depth=2,
        embed_dim=8,
        residual_output=False,
    )
    model = Translator(cfg, n_classes=N_CLASSES, loss=LossConfig(identity=identity))
    return model.train()


def make_batch(n: int = 2, side: int = 16) -> dict[str, torch.Tensor]:
    labels = torch.randint(0, N_CLASSES, (2, n, side, side))
    images = labels.float().unsqueeze(2) / N_CLASSES - 0.5 + 0.1 * torch.randn(2, n, 1, side, side)
    return {"a": images[0], "b": images[1], "a_label": labels[0], "b_label": labels[1]}


def run_step(model: Translator, batch: dict[str, torch.Tensor], *, parallel: bool) -> dict:
    """Generator and discriminator passes and backward; losses and gradients by name."""
    model.zero_grad(set_to_none=True)
    torch.set_num_threads(2 if parallel else 1)
    with StepRunner(model, device=CPU, parallel=parallel) as runner:
        assert runner.parallel == parallel
        gen = runner.generator(batch)
        runner.backward(gen)
        disc = runner.discriminator(batch, gen.outputs)
        runner.backward(disc)
    torch.set_num_threads(1)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {"gen": gen, "disc": disc, "grads": grads}


@pytest.mark.parametrize("kind", list(TranslatorKind))
def test_parallel_halves_compute_the_same_step(kind: TranslatorKind) -> None:
    model, batch = make_model(kind), make_batch()
    twin = copy.deepcopy(model)
    seq = run_step(model, batch, parallel=False)
    par = run_step(twin, batch, parallel=True)
    for step in ("gen", "disc"):
        assert list(par[step].terms) == list(seq[step].terms)
        torch.testing.assert_close(par[step].total, seq[step].total)
        for name, value in seq[step].terms.items():
            torch.testing.assert_close(par[step].terms[name], value, msg=name)
    assert set(par["grads"]) == set(seq["grads"])
    for name, grad in seq["grads"].items():
        torch.testing.assert_close(par["grads"][name], grad, msg=name)
    for name in seq["gen"].outputs:
        torch.testing.assert_close(par["gen"].outputs[name], seq["gen"].outputs[name])


def test_parallel_step_is_deterministic() -> None:
    model, batch = make_model(), make_batch()
    first = run_step(copy.deepcopy(model), batch, parallel=True)["grads"]
    second = run_step(copy.deepcopy(model), batch, parallel=True)["grads"]
    assert all(torch.equal(first[n], second[n]) for n in first)


def test_halves_sum_to_the_steps() -> None:
    model, batch = make_model(), make_batch()
    total, terms, outputs = generator_step(model, batch)
    with frozen_discriminators(model):
        ab = generator_half(model, batch, "AB")
        ba = generator_half(model, batch, "BA")
    torch.testing.assert_close(ab[0] + ba[0], total)
    assert set(ab[1]) == {"gan_ab", "cycle_a", "identity_a", "seg_real_a", "seg_trans_ab"}
    assert set(ba[2]) == {"fake_a", "rec_b", "seg_b", "seg_fake_a"}
    assert list(terms)[:4] == ["gan_ab", "gan_ba", "cycle_a", "cycle_b"]
    model.disc_a.eval()  # no spectral-norm power iteration: repeated passes agree
    model.disc_b.eval()
    d_total, d_terms = discriminator_step(model, batch, outputs)
    half_a = discriminator_half(model, batch, outputs, "A")
    half_b = discriminator_half(model, batch, outputs, "B")
    torch.testing.assert_close(half_a[0] + half_b[0], d_total)
    torch.testing.assert_close(half_a[1]["disc_a"], d_terms["disc_a"], rtol=0, atol=0)


def test_runner_stays_sequential_on_one_thread_or_when_disabled() -> None:
    model = make_model()
    assert not StepRunner(model, device=CPU, parallel=True).parallel
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    assert not StepRunner(model, device=CPU, parallel=False).parallel


def test_runner_keeps_the_callers_thread_count() -> None:
    torch.set_num_threads(2)
    with StepRunner(make_model(), device=CPU, parallel=True) as runner:
        assert runner.parallel
        assert torch.get_num_threads() == 2
    assert not runner.parallel  # closed


def test_bad_direction_site_or_outputs_are_rejected() -> None:
    model, batch = make_model(), make_batch()
    with pytest.raises(ConfigError, match="direction 'BB' is unknown"):
        generator_half(model, batch, "BB")
    with pytest.raises(InputError, match="site='C' is unknown"):
        discriminator_half(model, batch, {}, "C")
    with pytest.raises(InputError, match="output fake_a of generator_step"):
        discriminator_half(model, batch, {"fake_b": batch["b"]}, "A")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc setting")
def test_keep_freed_memory_applies_on_linux() -> None:
    assert keep_freed_memory() is True


def test_training_in_parallel_matches_sequential(
    tiny_cache: Path, tiny_kit: SimpleNamespace, tmp_path: Path
) -> None:
    finals = {}
    for name, threads, parallel in (("seq", 1, True), ("par", 2, True), ("par2", 2, True)):
        torch.set_num_threads(threads)  # 1 thread: the runner stays sequential
        config = tiny_kit.config(run={"parallel_directions": parallel})
        run_dir = train(config, tiny_cache, tmp_path / name, progress=False, max_steps=3)
        finals[name] = torch.load(run_dir / "final.pt", weights_only=True)["model"]
    for key, value in finals["seq"].items():
        assert torch.equal(finals["par"][key], finals["par2"][key]), key
        torch.testing.assert_close(finals["par"][key], value, rtol=1e-4, atol=1e-5, msg=key)
