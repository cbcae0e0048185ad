"""The four translators behind one interface: cyclegan, s-cyclegan, semgan, segrenorm.

A :class:`Translator` owns the two generators (``gen_ab`` = G: A->B, ``gen_ba`` = F: B->A),
the two PatchGAN discriminators, and, depending on the kind, the segmentation nets
(``seg_a`` = S, ``seg_b`` = Q) and the semantic extractors feeding the renormalised
generators. It translates; the losses of a training step are in
:mod:`segrenorm.training.objective`, which reads the loss weights it carries.

Conditioning (segrenorm): a generator is conditioned on the segmentation of *its own
input*, predicted by the net of that input's site: G(a | S(a)), F(G(a) | Q(G(a))),
F(b | Q(b)), G(F(b) | S(F(b))), and for the identity terms G(b | Q(b)), F(a | S(a)).

2.5-D input (``context_slices = k > 1``): images are stacks of k neighbouring slices,
(B, k, H, W). The generators translate the whole stack (k channels in and out, each
starting as the identity), so the cycle and identity losses compare stacks and the
discriminators judge k-channel stacks; the segmentation nets read the stack and predict
the centre slice's labels. Inference keeps the centre channel (:attr:`Translator.centre`).

Example:
    >>> from segrenorm.config.load import load_config
    >>> model = Translator.from_config(load_config("cpu"))
    >>> model.translate(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 1, 64, 64])
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from segrenorm.config.schema import (
    Config,
    ExtractorInit,
    LossConfig,
    ModelConfig,
    TranslatorKind,
)
from segrenorm.data.context import check_context
from segrenorm.errors import ConfigError, InputError
from segrenorm.models.nn.discriminator import PatchDiscriminator
from segrenorm.models.nn.extractor import SemanticExtractor
from segrenorm.models.nn.generator import Generator
from segrenorm.models.nn.renorm import set_film_enabled
from segrenorm.models.nn.segnet import SegUNet, check_image_batch
from segrenorm.vocabulary import SITES, check_direction

__all__ = ["Translator"]


def _as_kind(value: Any) -> TranslatorKind:
    if isinstance(value, TranslatorKind):
        return value
    for kind in TranslatorKind:
        if kind.value == value:
            return kind
    allowed = ", ".join(k.value for k in TranslatorKind)
    raise ConfigError(f"model.translator={value!r} is unknown: choose one of {allowed}.")


class Translator(nn.Module):
    """One of the four translators, chosen by ``cfg.translator``.

    Args:
        cfg: network shapes and the translator kind.
        n_classes: segmentation classes including background.
        loss: loss weights and class weights.
        context_slices: image channels k, the slices of a 2.5-D context stack (odd;
            ``data.context_slices``); 1 is the 2D translator.

    Raises:
        ConfigError: an unknown translator, fewer than 2 classes or an even
            ``context_slices``.
    """

    seg_a: SegUNet | None
    seg_b: SegUNet | None
    extractor_ab: SemanticExtractor | None
    extractor_ba: SemanticExtractor | None
    class_weights: Tensor

    def __init__(
        self, cfg: ModelConfig, *, n_classes: int, loss: LossConfig, context_slices: int = 1
    ) -> None:
        super().__init__()
        self.kind = _as_kind(cfg.translator)
        self.context_slices = k = check_context(context_slices)
        if n_classes < 2:
            raise ConfigError(
                f"n_classes={n_classes} must be >= 2 (background plus at least one class)."
            )
        self.cfg = cfg
        self.n_classes = n_classes
        self.loss_cfg = loss
        embed_dim = cfg.embed_dim if self.kind.renormalizes else None
        self.gen_ab = self._generator(cfg, embed_dim, k)
        self.gen_ba = self._generator(cfg, embed_dim, k)
        self.disc_a = PatchDiscriminator(ndf=cfg.ndf, n_layers=cfg.disc_layers, channels=k)
        self.disc_b = PatchDiscriminator(ndf=cfg.ndf, n_layers=cfg.disc_layers, channels=k)
        self.seg_a = self.seg_b = None
        self.extractor_ab = self.extractor_ba = None
        if self.kind.uses_segmentation:
            shape = {"ngf": cfg.seg_ngf, "depth": cfg.seg_depth, "in_channels": k}
            self.seg_a = SegUNet(n_classes=n_classes, **shape)
            self.seg_b = SegUNet(n_classes=n_classes, **shape)
        if self.kind.renormalizes:
            self.extractor_ab = self._extractor(cfg, n_classes)
            self.extractor_ba = self._extractor(cfg, n_classes)
        # Multiplies the cycle and identity weights (the trainer's consistency warm-up).
        self.consistency_scale = 1.0
        weights = torch.tensor(loss.weights_for(n_classes), dtype=torch.float32)
        # Derived from the loss config, so not stored in checkpoints.
        self.register_buffer("class_weights", weights, persistent=False)

    @staticmethod
    def _generator(cfg: ModelConfig, embed_dim: int | None, channels: int) -> Generator:
        return Generator(
            ngf=cfg.ngf,
            n_downsample=cfg.n_downsample,
            n_middle_blocks=cfg.n_middle_blocks,
            embed_dim=embed_dim,
            residual_output=cfg.residual_output,
            film_init_std=cfg.film_init_std,
            channels=channels,
        )

    @staticmethod
    def _extractor(cfg: ModelConfig, n_classes: int) -> SemanticExtractor:
        return SemanticExtractor(
            n_classes=n_classes,
            ngf=cfg.ngf,
            embed_dim=cfg.embed_dim,
            grid=cfg.extractor_grid,
            kaiming_init=cfg.extractor_init is ExtractorInit.KAIMING,
            normalize=cfg.embed_norm,
        )

    @classmethod
    def from_config(cls, config: Config) -> Translator:
        """Build the translator of a run configuration.

        Args:
            config: a validated run configuration; ``data.n_classes`` sets the classes and
                ``data.context_slices`` the image channels.
        """
        d = config.data
        return cls(
            config.model, n_classes=d.n_classes, loss=config.loss, context_slices=d.context_slices
        )

    @property
    def stride(self) -> int:
        """Image sides must be multiples of this."""
        return self.cfg.stride

    @property
    def centre(self) -> int:
        """The channel of the slice itself in a context stack (``context_slices // 2``)."""
        return self.context_slices // 2

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

    def route(self, direction: str) -> tuple[Generator, SegUNet | None, SemanticExtractor | None]:
        """The generator, the segmenter of its input site and the extractor of a direction.

        Args:
            direction: ``"AB"`` (G, S, extractor_ab) or ``"BA"`` (F, Q, extractor_ba).

        Returns:
            The three networks; the segmenter and extractor are None for translators that
            do not use them.

        Raises:
            ConfigError: ``direction`` is neither ``"AB"`` nor ``"BA"``.
        """
        if check_direction(direction) == "AB":
            return self.gen_ab, self.seg_a, self.extractor_ab
        return self.gen_ba, self.seg_b, self.extractor_ba

    @staticmethod
    def embed(extractor: SemanticExtractor | None, logits: Tensor | None) -> Tensor | None:
        """The conditioning embedding of segmentation logits, or None without an extractor.

        Args:
            extractor: the semantic extractor of the direction, or None.
            logits: segmentation logits (B, n_classes, H, W), or None.

        Returns:
            (B, embed_dim) embeddings of the softmax maps, or None.
        """
        if extractor is None or logits is None:
            return None
        return extractor(torch.softmax(logits, dim=1))  # (B, embed_dim)

    def segment(self, x: Tensor, site: str) -> Tensor:
        """Segmentation logits from ``seg_a`` (site ``"A"``) or ``seg_b`` (site ``"B"``).

        Args:
            x: images (B, k, H, W) in [-1, 1] (k = :attr:`context_slices`).
            site: ``"A"`` or ``"B"``.

        Returns:
            Logits (B, n_classes, H, W).

        Raises:
            InputError: ``site`` is neither ``"A"`` nor ``"B"``.
            ConfigError: the translator has no segmentation nets (cyclegan).
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
            x: images (B, k, H, W) in [-1, 1] (k = :attr:`context_slices`), H and W
                multiples of :attr:`stride`.
            direction: ``"AB"`` (G, conditioned on S(x)) or ``"BA"`` (F, on Q(x)).

        Returns:
            (B, k, H, W) translated images in (-1, 1).

        Raises:
            ConfigError: ``direction`` is neither ``"AB"`` nor ``"BA"``.
            InputError: ``x`` is not a (B, k, H, W) batch of multiples of the stride.
        """
        gen, seg, extractor = self.route(direction)
        what = f"Translator({self.kind.value}).translate"
        check_image_batch(x, self.context_slices, self.stride, what)
        logits = seg(x) if seg is not None and extractor is not None else None
        return gen(x, self.embed(extractor, logits))

    @torch.no_grad()
    def translate(self, x: Tensor, direction: str = "AB") -> Tensor:
        """Inference translation: G(x | S(x)) for ``"AB"``, F(x | Q(x)) for ``"BA"``.

        Args:
            x: images (B, k, H, W) in [-1, 1] (k = :attr:`context_slices`), H and W
                multiples of :attr:`stride`.
            direction: ``"AB"`` or ``"BA"``.

        Returns:
            (B, k, H, W) translated images in (-1, 1); channel :attr:`centre` is the
            translation of the slices themselves.

        Raises:
            ConfigError: ``direction`` is neither ``"AB"`` nor ``"BA"``.
            InputError: ``x`` is not a (B, k, H, W) batch of multiples of the stride.
        """
        return self.forward(x, direction)
