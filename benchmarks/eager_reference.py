"""An eager reference of segrenorm's translator: the same function, written the obvious way.

The speed benchmarks time it next to the package's networks on the same batch, in the same
run, and tests compare the two to 1e-5 (``tests/benchmarks/test_eager_reference.py``): it is
the independent check of every optimisation in ``segrenorm.models.nn``. "Obvious" means:
decoder inputs built with ``F.interpolate(nearest)`` and ``torch.cat``, the generator's tail
on the upsampled tensor; ``nn.InstanceNorm2d(affine=False)`` then FiLM as a separate multiply
and add, ``x_hat * (1 + gamma) + beta``; every activation and residual add its own
out-of-place op; the extractor's conv3x3, ``avg_pool2d(2)``, ReLU per stage; torch's spectral
norm in the discriminators; one ``backward()`` per step and plain ``torch.optim.Adam``.

It holds no weights of its own design: build it from a run's ``Config`` and copy a
``Translator`` into it (:meth:`ReferenceTranslator.load_from`, :func:`reference_of`). Its
state dict has the translator's keys, so the copy is strict. The networks are in
``eager_reference_nets.py``; both files import as top-level modules from ``benchmarks/``.

Example:
    >>> from segrenorm.config.load import load_config
    >>> config = load_config("cpu", overrides=["model.ngf=4"])
    >>> ref = reference_of(Translator.from_config(config), config)
    >>> reference_translate(ref, torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 1, 32, 32])
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from eager_reference_nets import (
    FiLMNorm,
    ReferenceDiscriminator,
    ReferenceExtractor,
    ReferenceGenerator,
    ReferenceSegNet,
)
from segrenorm.config.schema import Config, OptimConfig
from segrenorm.errors import ConfigError, InputError
from segrenorm.models.translator import Translator

__all__ = [
    "ReferenceLosses",
    "ReferenceTranslator",
    "reference_discriminator_loss",
    "reference_generator_loss",
    "reference_iteration",
    "reference_of",
    "reference_optimizers",
    "reference_translate",
]


Route = tuple[ReferenceGenerator, ReferenceSegNet | None, ReferenceExtractor | None]


class ReferenceTranslator(nn.Module):
    """G, F, the discriminators and, by the translator kind, the seg nets and extractors.

    Attribute names and parameter keys are the package translator's, so that
    :meth:`load_from` copies its state dict strictly. Freshly built it has torch's default
    weights: load a translator before use.

    Args:
        config: the run configuration (shapes, classes, context slices, loss weights).
    """

    class_weights: Tensor

    def __init__(self, config: Config) -> None:
        super().__init__()
        m, n_classes = config.model, config.data.n_classes
        self.config, self.kind = config, m.translator
        self.context_slices = k = config.data.context_slices
        embed_dim = m.embed_dim if self.kind.renormalizes else None
        self.gen_ab = ReferenceGenerator(m, embed_dim, k)
        self.gen_ba = ReferenceGenerator(m, embed_dim, k)
        self.disc_a, self.disc_b = ReferenceDiscriminator(m, k), ReferenceDiscriminator(m, k)
        seg = self.kind.uses_segmentation
        self.seg_a = ReferenceSegNet(m, n_classes, k) if seg else None
        self.seg_b = ReferenceSegNet(m, n_classes, k) if seg else None
        renorm = self.kind.renormalizes
        self.extractor_ab = ReferenceExtractor(m, n_classes) if renorm else None
        self.extractor_ba = ReferenceExtractor(m, n_classes) if renorm else None
        self.consistency_scale = 1.0  # the trainer's cycle/identity warm-up factor
        weights = torch.tensor(config.loss.weights_for(n_classes), dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)

    def load_from(self, translator: Translator) -> ReferenceTranslator:
        """Copy a translator's weights, spectral-norm vectors, FiLM switches and cycle scale.

        Args:
            translator: a translator built from the same configuration.

        Returns:
            This reference, on the translator's device and in its train/eval mode.

        Raises:
            InputError: the translator has another model, loss, class or context
                configuration, or a state dict without exactly this reference's keys.
        """
        mine = (self.config.model, self.config.loss, self.config.data.n_classes)
        theirs = (translator.cfg, translator.loss_cfg, translator.n_classes)
        if mine != theirs or self.context_slices != translator.context_slices:
            raise InputError(
                f"the eager reference of {self.kind.value} ({mine[2]} classes, "
                f"{self.context_slices} context slices) cannot copy a "
                f"{translator.kind.value} translator ({theirs[2]} classes, "
                f"{translator.context_slices} context slices) of another configuration: "
                "build the reference from the translator's own Config."
            )
        try:
            self.load_state_dict(translator.state_dict(), strict=True)
        except RuntimeError as exc:
            raise InputError(
                "the translator's state dict does not match the eager reference's layout, "
                f"which restates the architecture (update benchmarks/eager_reference.py): {exc}"
            ) from exc
        theirs_by_name = dict(translator.named_modules())
        for name, module in self.named_modules():
            if isinstance(module, FiLMNorm):
                module.enabled = bool(getattr(theirs_by_name[name], "enabled", True))
        self.consistency_scale = translator.consistency_scale
        return self.to(translator.class_weights.device).train(translator.training)

    def route(self, direction: str) -> Route:
        """The generator, its input site's segmenter and the extractor of ``"AB"`` or ``"BA"``.

        Args:
            direction: ``"AB"`` (G, S, extractor_ab) or ``"BA"`` (F, Q, extractor_ba).

        Raises:
            ConfigError: any other direction.
        """
        if direction == "AB":
            return self.gen_ab, self.seg_a, self.extractor_ab
        if direction == "BA":
            return self.gen_ba, self.seg_b, self.extractor_ba
        raise ConfigError(f"direction={direction!r} is unknown: use 'AB' or 'BA'.")


def reference_of(translator: Translator, config: Config) -> ReferenceTranslator:
    """A new eager reference of ``translator``, built from its ``config``, weights copied.

    Args:
        translator: the package translator.
        config: the configuration it was built from.

    Raises:
        InputError: see :meth:`ReferenceTranslator.load_from`.
    """
    return ReferenceTranslator(config).load_from(translator)


def _embed(extractor: ReferenceExtractor | None, logits: Tensor | None) -> Tensor | None:
    if extractor is None or logits is None:
        return None
    return extractor(torch.softmax(logits, dim=1))  # (B, embed_dim)


def reference_generator_loss(
    ref: ReferenceTranslator, batch: dict[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """The generator step's loss: LSGAN, cycle and identity L1, weighted CE, both cycles.

    From ``a``: S(a), G(a | S(a)), Q(G(a)), F(G(a) | Q(G(a))), D_B(G(a)) and, with identity
    loss, F(a | S(a)); the mirror image from ``b``. The configuration's weights, the cycle
    and identity weights times ``ref.consistency_scale``.

    Args:
        ref: the reference.
        batch: ``a``, ``b`` (B, k, H, W) and, with segmentation, ``a_label``, ``b_label``
            (B, H, W) int64, as ``benchmarks/train_speed.py::make_batch`` makes them.

    Returns:
        ``(total, terms, fakes)``: the weighted total with its graph, the detached terms
        named as by ``segrenorm.training.objective.generator_step``, and the detached
        translations by site (``fakes["b"]`` is G(a)).

    Raises:
        InputError: the batch lacks images or labels.
    """
    needed = ["a", "b"] + (["a_label", "b_label"] if ref.kind.uses_segmentation else [])
    missing = [key for key in needed if key not in batch]
    if missing:
        raise InputError(
            f"the eager reference's batch lacks {missing} (has {sorted(batch)}): the "
            f"{ref.kind.value} translator needs {needed}."
        )
    lw, scale, weight = ref.config.loss, ref.consistency_scale, ref.class_weights
    total = torch.zeros((), device=batch["a"].device)
    terms: dict[str, Tensor] = {}
    fakes: dict[str, Tensor] = {}
    for direction, src, dst in (("AB", "a", "b"), ("BA", "b", "a")):
        gen, seg_in, ext_fwd = ref.route(direction)
        back, seg_out, ext_back = ref.route(direction[::-1])
        disc = ref.disc_b if direction == "AB" else ref.disc_a
        x, d = batch[src], direction.lower()
        logits = seg_in(x) if seg_in is not None else None  # S(a)
        fake = gen(x, _embed(ext_fwd, logits))  # G(a | S(a))
        logits_fake = seg_out(fake) if seg_out is not None else None  # Q(G(a))
        rec = back(fake, _embed(ext_back, logits_fake))  # F(G(a) | Q(G(a)))
        terms[f"gan_{d}"] = gan = ((disc(fake) - 1.0) ** 2).mean()
        terms[f"cycle_{src}"] = cycle = (x - rec).abs().mean()
        half = lw.gan * gan + scale * lw.cycle * cycle
        if lw.identity > 0:
            identity = (x - back(x, _embed(ext_back, logits))).abs().mean()  # F(a | S(a))
            terms[f"identity_{src}"] = identity
            half = half + scale * lw.identity * identity
        if logits is not None and logits_fake is not None:
            label = batch[f"{src}_label"]
            terms[f"seg_real_{src}"] = real = F.cross_entropy(logits, label, weight=weight)
            terms[f"seg_trans_{d}"] = trans = F.cross_entropy(logits_fake, label, weight=weight)
            half = half + lw.seg_real * real + lw.seg_translated * trans
        total = total + half
        fakes[dst] = fake.detach()
    return total, {k: v.detach() for k, v in terms.items()}, fakes


def reference_discriminator_loss(
    ref: ReferenceTranslator, batch: dict[str, Tensor], fakes: dict[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    """``0.5 * (disc_a + disc_b)``, each the LSGAN loss on real images and translations.

    Real and fake images go through a discriminator as one batch, so spectral norm runs one
    power iteration per step, as in the package (two calls would compute another function).

    Args:
        ref: the reference.
        batch: the generator step's batch.
        fakes: its translations by site (:func:`reference_generator_loss`).

    Returns:
        ``(total, terms)`` with the detached terms ``disc_a`` and ``disc_b``.
    """
    total = torch.zeros((), device=batch["a"].device)
    terms: dict[str, Tensor] = {}
    for site, disc in (("a", ref.disc_a), ("b", ref.disc_b)):
        real, n = batch[site], batch[site].shape[0]
        scores = disc(torch.cat([real, fakes[site].detach()], dim=0))  # (2n, 1, h, w)
        term = 0.5 * (((scores[:n] - 1.0) ** 2).mean() + (scores[n:] ** 2).mean())
        total = total + 0.5 * term
        terms[f"disc_{site}"] = term.detach()
    return total, terms


def reference_optimizers(
    ref: ReferenceTranslator, optim: OptimConfig
) -> dict[str, torch.optim.Adam]:
    """Plain ``torch.optim.Adam`` per group: ``seg`` (seg nets, extractors), ``gen``, ``disc``.

    Args:
        ref: the reference.
        optim: learning rates and betas.
    """
    seg_nets = [ref.seg_a, ref.seg_b, ref.extractor_ab, ref.extractor_ba]
    groups = {
        "seg": [p for net in seg_nets if net is not None for p in net.parameters()],
        "gen": [*ref.gen_ab.parameters(), *ref.gen_ba.parameters()],
        "disc": [*ref.disc_a.parameters(), *ref.disc_b.parameters()],
    }
    rates = {"seg": optim.lr_seg, "gen": optim.lr_gen, "disc": optim.lr_disc}
    betas = (optim.beta1, optim.beta2)
    return {k: torch.optim.Adam(p, lr=rates[k], betas=betas) for k, p in groups.items() if p}


@dataclass(frozen=True)
class ReferenceLosses:
    """What one reference iteration computed (detached).

    Args:
        generator: the weighted generator loss.
        discriminator: the discriminator loss.
        terms: the unweighted terms of both steps by name.
    """

    generator: Tensor
    discriminator: Tensor
    terms: dict[str, Tensor]


def reference_iteration(
    ref: ReferenceTranslator,
    optimizers: dict[str, torch.optim.Adam],
    batch: dict[str, Tensor],
    *,
    freeze_discriminators: bool = True,
) -> ReferenceLosses:
    """One training iteration the obvious way: generator step, then discriminator step.

    Zero every gradient, build the summed generator loss, one ``backward()``, step ``seg``
    and ``gen``; zero the discriminators' gradients, build their loss, ``backward()``, step
    ``disc``. Afterwards every ``.grad`` holds the gradient of its own step.

    Args:
        ref: the reference, in training mode.
        optimizers: from :func:`reference_optimizers`.
        batch: see :func:`reference_generator_loss`.
        freeze_discriminators: turn the discriminators' ``requires_grad`` off during the
            generator step, as the package and the CycleGAN authors' code do, so that
            neither computes discriminator weight gradients the discriminator step would
            discard; the resulting gradients are the same either way.

    Returns:
        The losses, read once from the device as the trainer does.

    Raises:
        InputError: the batch lacks images or labels.
    """
    for opt in optimizers.values():
        opt.zero_grad(set_to_none=True)
    disc_params = [*ref.disc_a.parameters(), *ref.disc_b.parameters()]
    for p in disc_params:
        p.requires_grad_(not freeze_discriminators)
    try:
        gen_total, gen_terms, fakes = reference_generator_loss(ref, batch)
        gen_total.backward()
    finally:
        for p in disc_params:
            p.requires_grad_(True)
    for name in ("seg", "gen"):
        if name in optimizers:
            optimizers[name].step()
    optimizers["disc"].zero_grad(set_to_none=True)
    disc_total, disc_terms = reference_discriminator_loss(ref, batch, fakes)
    disc_total.backward()
    optimizers["disc"].step()
    terms = {**gen_terms, **disc_terms}
    torch.stack([gen_total.detach(), disc_total.detach(), *terms.values()]).tolist()
    return ReferenceLosses(gen_total.detach(), disc_total.detach(), terms)


def reference_translate(ref: ReferenceTranslator, x: Tensor, direction: str = "AB") -> Tensor:
    """The inference graph ``G(x | E(softmax(S(x))))`` of one direction, centre slice out.

    What ``segrenorm.models.inference.ConditionedGenerator`` computes, in one pass over the
    whole batch, without gradients.

    Args:
        ref: the reference.
        x: (B, k, H, W) slices or context stacks in [-1, 1], sides multiples of the stride.
        direction: ``"AB"`` or ``"BA"``.

    Returns:
        (B, 1, H, W) translated centre slices.

    Raises:
        ConfigError: an unknown direction.
    """
    gen, seg, extractor = ref.route(direction)
    centre = ref.context_slices // 2
    with torch.inference_mode():
        emb = _embed(extractor, seg(x)) if seg is not None and extractor is not None else None
        return gen(x, emb)[:, centre : centre + 1]
