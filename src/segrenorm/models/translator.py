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
    >>> from segrenorm.config.schema import load_config
    >>> model = Translator.from_config(load_config("cpu"))
    >>> model.translate(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 1, 64, 64])
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from segrenorm.config.schema import Config, LossConfig, ModelConfig, TranslatorKind
from segrenorm.errors import ConfigError, InputError
from segrenorm.models.nn.discriminator import PatchDiscriminator
from segrenorm.models.nn.extractor import SemanticExtractor
from segrenorm.models.nn.generator import Generator
from segrenorm.models.nn.renorm import set_film_enabled
from segrenorm.models.nn.segnet import SegUNet, check_image_batch
from segrenorm.training.losses import cycle_l1, lsgan_d, lsgan_g, weighted_ce

__all__ = ["DIRECTIONS", "SITES", "Translator", "join_halves"]

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
        # Multiplies the cycle and identity weights (the trainer's consistency warm-up).
        self.consistency_scale = 1.0
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

    def frozen_discriminators(self) -> contextlib.AbstractContextManager[None]:
        """Context in which the discriminators' weights take no gradient (generator losses).

        :meth:`generator_step` enters it itself; callers of :meth:`generator_half` must.
        """
        return _frozen([self.disc_a, self.disc_b])

    def generator_half(
        self, batch: dict[str, Tensor], direction: str
    ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """The generator losses of one cycle: everything computed from one site's images.

        ``"AB"`` starts from ``a``: S(a), G(a | S(a)), Q(G(a)), F(G(a) | Q(G(a))),
        D_B(G(a)) and, with identity loss, F(a | S(a)); ``"BA"`` is the mirror image from
        ``b``. The two halves share no tensors, so their graphs can be built and
        back-propagated independently (even concurrently); :meth:`generator_step` is their
        sum. Call it inside :meth:`frozen_discriminators`.

        Args:
            batch: as for :meth:`generator_step`.
            direction: ``"AB"`` or ``"BA"``.

        Returns:
            ``(total, terms, outputs)`` of this half, named as in :meth:`generator_step`
            (``"AB"``: gan_ab, cycle_a, [identity_a], [seg_real_a, seg_trans_ab]; outputs
            fake_b, rec_a, [seg_a, seg_fake_b]).
        """
        if direction not in DIRECTIONS:
            raise InputError(f"direction={direction!r} is unknown: use 'AB' or 'BA'.")
        self._check_batch(batch)
        src, dst = ("a", "b") if direction == "AB" else ("b", "a")
        gen, seg_in, ext_fwd = self._route(direction)
        back, seg_out, ext_back = self._route(direction[::-1])
        disc = self.disc_b if direction == "AB" else self.disc_a
        x, lw = batch[src], self.loss_cfg
        logits = seg_in(x) if seg_in is not None else None  # S(a): (B, C, h, w)
        fake = gen(x, self._embed(ext_fwd, logits))  # G(a | S(a))
        logits_fake = seg_out(fake) if seg_out is not None else None  # Q(G(a))
        rec = back(fake, self._embed(ext_back, logits_fake))  # F(G(a) | Q(G(a)))
        terms = {f"gan_{direction.lower()}": lsgan_g(disc(fake)), f"cycle_{src}": cycle_l1(x, rec)}
        scale = self.consistency_scale
        total = lw.gan * terms[f"gan_{direction.lower()}"]
        total = total + scale * lw.cycle * terms[f"cycle_{src}"]
        if lw.identity > 0:
            idt = back(x, self._embed(ext_back, logits))  # F(a | S(a))
            terms[f"identity_{src}"] = cycle_l1(x, idt)
            total = total + scale * lw.identity * terms[f"identity_{src}"]
        outputs = {f"fake_{dst}": fake.detach(), f"rec_{src}": rec.detach()}
        if logits is not None and logits_fake is not None:
            label, w = batch[f"{src}_label"], self.class_weights
            terms[f"seg_real_{src}"] = weighted_ce(logits, label, w)
            terms[f"seg_trans_{direction.lower()}"] = weighted_ce(logits_fake, label, w)
            total = total + lw.seg_real * terms[f"seg_real_{src}"]
            total = total + lw.seg_translated * terms[f"seg_trans_{direction.lower()}"]
            # max(...).indices is argmax (first maximum on ties) at a tenth of the cost here.
            outputs[f"seg_{src}"] = logits.detach().max(dim=1).indices
            outputs[f"seg_fake_{dst}"] = logits_fake.detach().max(dim=1).indices
        return total, terms, outputs

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
        with self.frozen_discriminators():
            halves = [self.generator_half(batch, d) for d in DIRECTIONS]
        return join_halves(halves)

    def discriminator_half(
        self, batch: dict[str, Tensor], outputs: dict[str, Tensor], site: str
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Half the discriminator loss: ``0.5 * disc_a`` (site ``"A"``) or ``0.5 * disc_b``.

        Args:
            batch: the batch given to :meth:`generator_step`.
            outputs: its outputs (``fake_a`` for site A, ``fake_b`` for site B).
            site: ``"A"`` or ``"B"``.

        Returns:
            ``(loss, terms)`` with the detached term ``disc_a`` or ``disc_b``.
        """
        if site not in SITES:
            raise InputError(f"site={site!r} is unknown: use 'A' or 'B'.")
        key = site.lower()
        if f"fake_{key}" not in outputs or key not in batch:
            raise InputError(
                f"discriminator_step needs batch[{key!r}] and the output fake_{key} of "
                f"generator_step; got batch keys {sorted(batch)} and outputs {sorted(outputs)}."
            )
        disc = self.disc_a if site == "A" else self.disc_b
        real, fake = _score_pair(disc, batch[key], outputs[f"fake_{key}"].detach())
        term = lsgan_d(real, fake)
        return 0.5 * term, {f"disc_{key}": term.detach()}

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
        halves = [self.discriminator_half(batch, outputs, site) for site in SITES]
        total, terms, _ = join_halves([(loss, t, {}) for loss, t in halves])
        return total, terms


def join_halves(
    halves: Sequence[tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]],
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Sum the halves' totals and merge their (detached) terms and outputs.

    Terms are interleaved (gan_ab, gan_ba, cycle_a, cycle_b, ...), so the two directions'
    versions of a term sit side by side in logs.

    Args:
        halves: ``(total, terms, outputs)`` per direction, as from
            :meth:`Translator.generator_half`.
    """
    total = halves[0][0]
    for half in halves[1:]:
        total = total + half[0]
    terms: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}
    for group in zip(*(list(h[1].items()) for h in halves), strict=True):
        terms.update((k, v.detach()) for k, v in group)
    for half in halves:
        outputs.update(half[2])
    return total, terms, outputs
