"""Conditioning sensitivity: how much a conditioned translator's output follows its embedding.

For a batch of slices ``x`` with foreground masks, and for each slice another one ``x'``::

    sensitivity = mean_fg |G(x | f(x)) - G(x | f(x'))|  /  mean_fg |G(x | f(x)) - x|

the change of the output when a slice is given another slice's segmentation embedding,
over the whole translation, both inside the foreground of ``x`` (means pooled over every
foreground pixel of the batch). With 2.5-D input (k-slice stacks) both are taken on the
centre channel, the slice inference keeps, inside the centre slice's foreground. 0 means the
conditioning does nothing; a translator without a semantic extractor (cyclegan, s-cyclegan,
semgan) has no figure (None).

The sums are kept apart (:class:`ConditioningSums`) so that a figure over many batches pools
their pixels: training logs one batch (:func:`conditioning_sensitivity`); the evaluation
pools the held-out slices (:mod:`segrenorm.evaluate.conditioning`).

Example:
    >>> from segrenorm.config.load import load_config
    >>> from segrenorm.models.translator import Translator
    >>> model = Translator.from_config(load_config("cpu"))
    >>> x = torch.rand(2, 1, 64, 64) * 2 - 1
    >>> conditioning_sensitivity(model, x, torch.ones_like(x))["sensitivity"]  # G starts as x
    0.0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from segrenorm.errors import InputError
from segrenorm.models.nn.segnet import check_image_batch
from segrenorm.models.translator import Translator

__all__ = [
    "ConditioningSums",
    "conditioning_sensitivity",
    "conditioning_sums",
    "embed_batch",
    "is_conditioned",
    "translate_with_partner",
]


@dataclass(frozen=True)
class ConditioningSums:
    """Foreground sums of one or more batches; add them to pool batches.

    Args:
        change: sum over foreground pixels of ``|G(x | f(x)) - G(x | f(x'))|``.
        translation: sum over foreground pixels of ``|G(x | f(x)) - x|``.
        pixels: foreground pixels summed over.
    """

    change: float = 0.0
    translation: float = 0.0
    pixels: int = 0

    def __add__(self, other: ConditioningSums) -> ConditioningSums:
        return ConditioningSums(
            self.change + other.change,
            self.translation + other.translation,
            self.pixels + other.pixels,
        )

    @property
    def sensitivity(self) -> float | None:
        """``change / translation``; None when the output equals the input (or no pixels)."""
        return self.change / self.translation if self.translation > 0 else None

    def as_dict(self) -> dict[str, Any]:
        """``{sensitivity, change, translation, pixels}`` with the two means per pixel."""
        n = self.pixels
        return {
            "sensitivity": self.sensitivity,
            "change": self.change / n if n else None,
            "translation": self.translation / n if n else None,
            "pixels": n,
        }


def embed_batch(translator: Translator, x: Tensor, direction: str = "AB") -> Tensor | None:
    """The conditioning embeddings f(x) a direction's generator gets, or None if unconditioned.

    Args:
        translator: any of the four translators.
        x: images (B, k, H, W) in [-1, 1] (k: the translator's ``context_slices``), H and W
            multiples of the translator's stride.
        direction: ``"AB"`` (f(S(x)) for G) or ``"BA"`` (f(Q(x)) for F).

    Returns:
        (B, embed_dim) embeddings, or None for a translator without semantic extractors.

    Raises:
        ConfigError: an unknown direction.
    """
    _, seg, extractor = translator.route(direction)
    if seg is None or extractor is None:
        return None
    with torch.no_grad():
        return translator.embed(extractor, seg(x))


def is_conditioned(translator: Translator, direction: str = "AB") -> bool:
    """Whether a direction's generator is conditioned on a segmentation embedding.

    Args:
        translator: any of the four translators.
        direction: ``"AB"`` (G) or ``"BA"`` (F).

    Raises:
        ConfigError: an unknown direction.
    """
    _, seg, extractor = translator.route(direction)
    return seg is not None and extractor is not None


@torch.no_grad()
def translate_with_partner(translator: Translator, pair: Tensor, direction: str = "AB") -> Tensor:
    """``G(x | f(x'))``: each image translated with the embedding of its partner image.

    The wrong-segmentation control: the first k channels of ``pair`` (the image, or its
    2.5-D context stack of k = ``context_slices``) are translated, conditioned on the
    segmentation embedding of the last k (the partner's). With ``x' = x`` it is the
    translator's own :meth:`~segrenorm.models.translator.Translator.translate`, operation for
    operation. A function of (B, C, h, w) tiles (tiled translation) can wrap it: a tile's
    partner is then the partner's tile at the same place.

    Args:
        translator: a segmentation-renormalised translator.
        pair: (B, 2k, H, W) images ``[x, x']`` in [-1, 1], H and W multiples of the stride.
        direction: ``"AB"`` (G, embedding f(S(x'))) or ``"BA"`` (F, f(Q(x'))).

    Returns:
        (B, k, H, W) translated images, what ``translate`` returns for ``x``.

    Raises:
        ConfigError: an unknown direction.
        InputError: a translator without semantic extractors, or a batch that is not
            (B, 2k, H, W) of multiples of the stride.
    """
    gen, seg, extractor = translator.route(direction)
    if seg is None or extractor is None:
        raise InputError(
            f"translator {translator.kind.value} is not conditioned on an embedding: a "
            "wrong-segmentation control needs segrenorm."
        )
    k = translator.context_slices
    check_image_batch(pair, 2 * k, translator.stride, "translate_with_partner")
    x, partner = pair[:, :k].contiguous(), pair[:, k:].contiguous()  # (B, k, H, W) each
    return gen(x, translator.embed(extractor, seg(partner)))


def conditioning_sums(
    translator: Translator,
    x: Tensor,
    masks: Tensor,
    own: Tensor,
    other: Tensor,
    direction: str = "AB",
) -> ConditioningSums:
    """Foreground sums of ``|G(x | own) - G(x | other)|`` and ``|G(x | own) - x|``.

    Args:
        translator: a segmentation-renormalised translator.
        x: images (B, k, H, W) in [-1, 1] (k: the translator's ``context_slices``), H and W
            multiples of the translator's stride.
        masks: foreground of the centre slices, (B, 1, H, W) or (B, H, W), boolean or 0/1.
        own: the slices' own embeddings f(x), (B, embed_dim) (see :func:`embed_batch`).
        other: the embeddings to swap in, f(x') for another slice x' each, (B, embed_dim).
        direction: ``"AB"`` (G) or ``"BA"`` (F).

    Raises:
        ConfigError: an unknown direction.
        InputError: a translator without semantic extractors, or shapes that do not match.
    """
    gen, _, extractor = translator.route(direction)
    if extractor is None:
        raise InputError(
            f"translator {translator.kind.value} is not conditioned on an embedding: its "
            "conditioning sensitivity is undefined (use segrenorm)."
        )
    check_image_batch(x, translator.context_slices, translator.stride, "conditioning_sums")
    plane = (x.shape[0], 1, *x.shape[2:])
    if tuple(masks.shape) not in (plane, plane[:1] + plane[2:]):
        raise InputError(
            f"conditioning: foreground masks {tuple(masks.shape)} do not match the images "
            f"{tuple(x.shape)}: pass (B, 1, H, W) or (B, H, W) masks of the same slices."
        )
    expected = (x.shape[0], extractor.embed_dim)
    for name, emb in (("own", own), ("other", other)):
        if tuple(emb.shape) != expected:
            raise InputError(
                f"conditioning: {name} embeddings {tuple(emb.shape)} should be {expected}, one "
                "per slice from the semantic extractor."
            )
    inside = masks.reshape(plane).to(torch.float32) > 0.5  # (B, 1, H, W)
    c = slice(translator.centre, translator.centre + 1)  # the slice inference keeps
    with torch.no_grad():
        translated = gen(x, own)[:, c].float()  # G(x | f(x))
        swapped = gen(x, other)[:, c].float()  # G(x | f(x'))
        change = (translated - swapped).abs()[inside].sum()
        moved = (translated - x[:, c].float()).abs()[inside].sum()
    return ConditioningSums(float(change), float(moved), int(inside.sum()))


def conditioning_sensitivity(
    translator: Translator, x: Tensor, masks: Tensor, direction: str = "AB", *, shift: int = 1
) -> dict[str, Any] | None:
    """The sensitivity of one batch, each slice given the embedding of the slice ``shift`` on.

    x' is the batch rolled by ``shift`` (slice i gets the embedding of slice i - shift, mod B),
    so every slice is paired with another one of the batch. Costs one segmentation and two
    generator passes, without gradients.

    Args:
        translator: any of the four translators.
        x: images (B, k, H, W) in [-1, 1], B >= 2.
        masks: foreground of the centre slices, (B, 1, H, W) or (B, H, W).
        direction: ``"AB"`` (G) or ``"BA"`` (F).
        shift: how far the batch is rolled; must not be a multiple of B.

    Returns:
        :meth:`ConditioningSums.as_dict` of the batch, or None for a translator that is not
        conditioned on an embedding.

    Raises:
        ConfigError: an unknown direction.
        InputError: fewer than two slices, a shift that pairs slices with themselves, or
            masks that do not match the images.
    """
    if x.dim() != 4 or x.shape[0] < 2 or shift % x.shape[0] == 0:
        raise InputError(
            f"conditioning sensitivity needs a batch (B, k, H, W) of B >= 2 slices and a "
            f"shift that is not a multiple of B, got {tuple(x.shape)} and shift={shift}."
        )
    own = embed_batch(translator, x, direction)
    if own is None:
        return None
    other = own.roll(shift, dims=0)  # (B, embed_dim): row i is f(x[i - shift])
    return conditioning_sums(translator, x, masks, own, other, direction).as_dict()
