"""The four translators behind one interface: cyclegan, s-cyclegan, semgan, segrenorm.

A :class:`Translator` owns the two generators (``gen_ab`` = G: A->B, ``gen_ba`` = F: B->A),
the two PatchGAN discriminators, and, depending on the kind, the segmentation nets
(``seg_a`` = S, ``seg_b`` = Q) and the semantic extractors feeding the renormalised
generators. It computes the losses of one training step; the trainer owns the
optimisers.

Conditioning (segrenorm): a generator is conditioned on the segmentation of *its own
input*, predicted by the net of that input's site: G(a | S(a)), F(G(a) | Q(G(a))),
F(b | Q(b)), G(F(b) | S(F(b))), and for the identity terms G(b | Q(b)), F(a | S(a)).

Example:
    >>> from segrenorm.config import load_config
    >>> model = Translator.from_config(load_config("cpu"))
    >>> model.translate(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 1, 64, 64])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from segrenorm.config import Config, LossConfig, ModelConfig, TranslatorKind
from segrenorm.errors import ConfigError, InputError
from segrenorm.losses import cycle_l1, lsgan_d, lsgan_g, weighted_ce
from segrenorm.nn.discriminator import PatchDiscriminator
from segrenorm.nn.extractor import SemanticExtractor
from segrenorm.nn.generator import Generator
from segrenorm.nn.renorm import set_film_enabled
from segrenorm.nn.segnet import SegUNet, check_image_batch

__all__ = ["DIRECTIONS", "Translator"]

DIRECTIONS = ("AB", "BA")
SITES = ("A", "B")


def _as_kind(value: Any) -> TranslatorKind:
    if isinstance(value, TranslatorKind):
        return value
    for kind in TranslatorKind:
        if kind.value == value:
            return kind
    allowed = ", ".join(k.value for k in TranslatorKind)
    raise ConfigError(f"model.translator={value!r} is unknown: choose one of {allowed}.")


@contextmanager
def _frozen(modules: Sequence[nn.Module]) -> Iterator[None]:
    """Build graphs without weight gradients for ``modules`` (restoring the flags after).

    The generator loss passes through the discriminators; their weights get no
    gradient from it, which saves that backward work and keeps the discriminator's
    gradient clean for its own step.
    """
    params = [p for m in modules for p in m.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)


def _score_pair(disc: nn.Module, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
    """Discriminator scores on real and fake images, in one batch when shapes allow."""
    if real.shape != fake.shape:
        return disc(real), disc(fake)
    scores = disc(torch.cat([real, fake], dim=0))
    return scores[: real.shape[0]], scores[real.shape[0] :]


class Translator(nn.Module):
    """One of the four translators, chosen by ``cfg.translator``.

    Args:
        cfg: network shapes and the translator kind.
        n_classes: segmentation classes including background.
        loss: loss weights and class weights.
    """

    seg_a: SegUNet | None
    seg_b: SegUNet | None
    extractor_ab: SemanticExtractor | None
    extractor_ba: SemanticExtractor | None
    class_weights: Tensor

    def __init__(self, cfg: ModelConfig, *, n_classes: int, loss: LossConfig) -> None:
        super().__init__()
        self.kind = _as_kind(cfg.translator)
        if n_classes < 2:
            raise ConfigError(
                f"n_classes={n_classes} must be >= 2 (background plus at least one class)."
            )
        self.cfg = cfg
        self.n_classes = n_classes
        self.loss_cfg = loss
        embed_dim = cfg.embed_dim if self.kind.renormalizes else None
        self.gen_ab = self._generator(cfg, embed_dim)
        self.gen_ba = self._generator(cfg, embed_dim)
        self.disc_a = PatchDiscriminator(ndf=cfg.ndf, n_layers=cfg.disc_layers)
        self.disc_b = PatchDiscriminator(ndf=cfg.ndf, n_layers=cfg.disc_layers)
        self.seg_a = self.seg_b = None
        self.extractor_ab = self.extractor_ba = None
        if self.kind.uses_segmentation:
            self.seg_a = SegUNet(n_classes=n_classes, ngf=cfg.seg_ngf, depth=cfg.seg_depth)
            self.seg_b = SegUNet(n_classes=n_classes, ngf=cfg.seg_ngf, depth=cfg.seg_depth)
        if self.kind.renormalizes:
            self.extractor_ab = self._extractor(cfg, n_classes)
            self.extractor_ba = self._extractor(cfg, n_classes)
        weights = torch.tensor(loss.weights_for(n_classes), dtype=torch.float32)
        # Derived from the loss config, so not stored in checkpoints.
        self.register_buffer("class_weights", weights, persistent=False)

    @staticmethod
    def _generator(cfg: ModelConfig, embed_dim: int | None) -> Generator:
        return Generator(
            ngf=cfg.ngf,
            n_downsample=cfg.n_downsample,
            n_middle_blocks=cfg.n_middle_blocks,
            embed_dim=embed_dim,
            residual_output=cfg.residual_output,
            zero_init_film=cfg.zero_init_film,
        )

    @staticmethod
    def _extractor(cfg: ModelConfig, n_classes: int) -> SemanticExtractor:
        return SemanticExtractor(
            n_classes=n_classes, ngf=cfg.ngf, embed_dim=cfg.embed_dim, grid=cfg.extractor_grid
        )

    @classmethod
    def from_config(cls, config: Config) -> Translator:
        """Build the translator of a run configuration.

        Args:
            config: a validated run configuration; ``data.n_classes`` sets the classes.
        """
        return cls(config.model, n_classes=config.data.n_classes, loss=config.loss)

    @property
    def stride(self) -> int:
        """Image sides must be multiples of this."""
        return self.cfg.stride

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters per optimiser: seg nets + extractors, generators, discriminators."""
        seg_nets = [self.seg_a, self.seg_b, self.extractor_ab, self.extractor_ba]
        return {
            "seg": [p for net in seg_nets if net is not None for p in net.parameters()],
            "gen": [*self.gen_ab.parameters(), *self.gen_ba.parameters()],
            "disc": [*self.disc_a.parameters(), *self.disc_b.parameters()],
        }

    def set_film_enabled(self, enabled: bool) -> None:
        """Switch renorm layers between FiLM and plain instance norm (warm-up).

        Args:
            enabled: False forces gamma = beta = 0 in every renorm layer.
        """
        set_film_enabled(self, enabled)

    # -- pieces ---------------------------------------------------------------------------

    def _route(self, direction: str) -> tuple[Generator, SegUNet | None, SemanticExtractor | None]:
        """Generator, segmenter of its input site and extractor for a direction."""
        if direction == "AB":
            return self.gen_ab, self.seg_a, self.extractor_ab
        if direction == "BA":
            return self.gen_ba, self.seg_b, self.extractor_ba
        raise InputError(f"direction={direction!r} is unknown: use 'AB' or 'BA'.")

    @staticmethod
    def _embed(extractor: SemanticExtractor | None, logits: Tensor | None) -> Tensor | None:
        if extractor is None or logits is None:
            return None
        return extractor(torch.softmax(logits, dim=1))  # (B, embed_dim)

    def segment(self, x: Tensor, site: str) -> Tensor:
        """Segmentation logits from ``seg_a`` (site ``"A"``) or ``seg_b`` (site ``"B"``).

        Args:
            x: images (B, 1, H, W) in [-1, 1].
            site: ``"A"`` or ``"B"``.

        Returns:
            Logits (B, n_classes, H, W).
        """
        if site not in SITES:
            raise InputError(f"site={site!r} is unknown: use 'A' or 'B'.")
        net = self.seg_a if site == "A" else self.seg_b
        if net is None:
            raise ConfigError(
                f"translator {self.kind.value} has no segmentation nets: segment() needs "
                "s-cyclegan, semgan or segrenorm."
            )
        return net(x)

    def forward(self, x: Tensor, direction: str = "AB") -> Tensor:
        """Translate with gradients (see :meth:`translate`).

        Args:
            x: images (B, 1, H, W) in [-1, 1], H and W multiples of :attr:`stride`.
            direction: ``"AB"`` (G, conditioned on S(x)) or ``"BA"`` (F, on Q(x)).

        Returns:
            (B, 1, H, W) translated images in (-1, 1).
        """
        gen, seg, extractor = self._route(direction)
        check_image_batch(x, 1, self.stride, f"Translator({self.kind.value}).translate")
        logits = seg(x) if seg is not None and extractor is not None else None
        return gen(x, self._embed(extractor, logits))

    @torch.no_grad()
    def translate(self, x: Tensor, direction: str = "AB") -> Tensor:
        """Inference translation: G(x | S(x)) for ``"AB"``, F(x | Q(x)) for ``"BA"``.

        Args:
            x: images (B, 1, H, W) in [-1, 1], H and W multiples of :attr:`stride`.
            direction: ``"AB"`` or ``"BA"``.

        Returns:
            (B, 1, H, W) translated images in (-1, 1).
        """
        return self.forward(x, direction)

    # -- training steps -------------------------------------------------------------------

    def _check_batch(self, batch: dict[str, Tensor]) -> None:
        keys = ["a", "b"]
        if self.kind.uses_segmentation:
            keys += ["a_label", "b_label"]
        missing = [k for k in keys if k not in batch]
        if missing:
            raise InputError(
                f"batch lacks {', '.join(missing)} (has {', '.join(sorted(batch)) or 'nothing'}): "
                f"the {self.kind.value} translator needs {', '.join(keys)}."
            )
        for site in ("a", "b"):
            check_image_batch(batch[site], 1, self.stride, f"batch[{site!r}]")

    def generator_step(
        self, batch: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Losses of the generators (and segmentation nets) for one batch.

        Args:
            batch: ``"a"``, ``"b"`` (B, 1, h, w) in [-1, 1]; with segmentation also
                ``"a_label"``, ``"b_label"`` (B, h, w) int64.

        Returns:
            ``(total, terms, outputs)``: the weighted total loss; the unweighted terms
            (detached 0-d tensors: gan_ab, gan_ba, cycle_a, cycle_b, [identity_a,
            identity_b], [seg_real_a, seg_real_b, seg_trans_ab, seg_trans_ba]); detached
            outputs fake_b, rec_a, fake_a, rec_b and, with segmentation, argmax maps
            seg_a = S(a), seg_b = Q(b), seg_fake_b = Q(G(a)), seg_fake_a = S(F(b)).
        """
        self._check_batch(batch)
        a, b = batch["a"], batch["b"]
        lw = self.loss_cfg
        seg_a, seg_b = self.seg_a, self.seg_b
        ext_ab, ext_ba = self.extractor_ab, self.extractor_ba
        terms: dict[str, Tensor] = {}
        with _frozen([self.disc_a, self.disc_b]):
            logits_a = seg_a(a) if seg_a is not None else None  # S(a): (B, C, h, w)
            logits_b = seg_b(b) if seg_b is not None else None  # Q(b)
            fake_b = self.gen_ab(a, self._embed(ext_ab, logits_a))  # G(a | S(a))
            fake_a = self.gen_ba(b, self._embed(ext_ba, logits_b))  # F(b | Q(b))
            logits_fake_b = seg_b(fake_b) if seg_b is not None else None  # Q(G(a))
            logits_fake_a = seg_a(fake_a) if seg_a is not None else None  # S(F(b))
            rec_a = self.gen_ba(fake_b, self._embed(ext_ba, logits_fake_b))
            rec_b = self.gen_ab(fake_a, self._embed(ext_ab, logits_fake_a))
            terms["gan_ab"] = lsgan_g(self.disc_b(fake_b))
            terms["gan_ba"] = lsgan_g(self.disc_a(fake_a))
        terms["cycle_a"] = cycle_l1(a, rec_a)
        terms["cycle_b"] = cycle_l1(b, rec_b)
        total = lw.gan * (terms["gan_ab"] + terms["gan_ba"])
        total = total + lw.cycle * (terms["cycle_a"] + terms["cycle_b"])
        if lw.identity > 0:
            idt_b = self.gen_ab(b, self._embed(ext_ab, logits_b))  # G(b | Q(b))
            idt_a = self.gen_ba(a, self._embed(ext_ba, logits_a))  # F(a | S(a))
            terms["identity_a"] = cycle_l1(a, idt_a)
            terms["identity_b"] = cycle_l1(b, idt_b)
            total = total + lw.identity * (terms["identity_a"] + terms["identity_b"])
        outputs = {
            "fake_b": fake_b.detach(),
            "rec_a": rec_a.detach(),
            "fake_a": fake_a.detach(),
            "rec_b": rec_b.detach(),
        }
        if (
            logits_a is not None
            and logits_b is not None
            and logits_fake_a is not None
            and logits_fake_b is not None
        ):
            a_label, b_label, w = batch["a_label"], batch["b_label"], self.class_weights
            terms["seg_real_a"] = weighted_ce(logits_a, a_label, w)
            terms["seg_real_b"] = weighted_ce(logits_b, b_label, w)
            terms["seg_trans_ab"] = weighted_ce(logits_fake_b, a_label, w)
            terms["seg_trans_ba"] = weighted_ce(logits_fake_a, b_label, w)
            total = total + lw.seg_real * (terms["seg_real_a"] + terms["seg_real_b"])
            total = total + lw.seg_translated * (terms["seg_trans_ab"] + terms["seg_trans_ba"])
            outputs["seg_a"] = logits_a.detach().argmax(dim=1)
            outputs["seg_b"] = logits_b.detach().argmax(dim=1)
            outputs["seg_fake_b"] = logits_fake_b.detach().argmax(dim=1)
            outputs["seg_fake_a"] = logits_fake_a.detach().argmax(dim=1)
        return total, {k: v.detach() for k, v in terms.items()}, outputs

    def discriminator_step(
        self, batch: dict[str, Tensor], outputs: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Least-squares discriminator loss on real images and (detached) translations.

        Args:
            batch: the batch given to :meth:`generator_step`.
            outputs: its outputs (``fake_b``, ``fake_a``).

        Returns:
            ``(loss, terms)`` with loss = 0.5 * (disc_a + disc_b) and the detached terms
            ``disc_a``, ``disc_b``.
        """
        missing = [k for k in ("fake_a", "fake_b") if k not in outputs]
        if missing or "a" not in batch or "b" not in batch:
            raise InputError(
                "discriminator_step needs batch['a'], batch['b'] and the outputs of "
                f"generator_step (fake_a, fake_b); missing {missing or 'batch images'}."
            )
        real_b, fake_b = _score_pair(self.disc_b, batch["b"], outputs["fake_b"].detach())
        real_a, fake_a = _score_pair(self.disc_a, batch["a"], outputs["fake_a"].detach())
        disc_b = lsgan_d(real_b, fake_b)
        disc_a = lsgan_d(real_a, fake_a)
        return 0.5 * (disc_a + disc_b), {"disc_a": disc_a.detach(), "disc_b": disc_b.detach()}
