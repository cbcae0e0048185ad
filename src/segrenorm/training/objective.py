"""The training objective of a translator: the losses of one generator and one discriminator step.

The generator loss of a batch is the sum of two independent halves, one per cycle direction
(:func:`generator_half`); the discriminator loss is the sum of one half per site
(:func:`discriminator_half`). :func:`generator_step` and :func:`discriminator_step` are
those sums, and :class:`segrenorm.training.step.StepRunner` builds them half by half.
The loss weights and class weights come from the translator's ``loss_cfg`` and
``class_weights``; its ``consistency_scale`` multiplies the cycle and identity weights.

Example:
    >>> total, terms, outputs = generator_step(model, batch)  # doctest: +SKIP
    >>> d_total, d_terms = discriminator_step(model, batch, outputs)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from segrenorm.errors import InputError
from segrenorm.models.nn.segnet import check_image_batch
from segrenorm.training.losses import cycle_l1, lsgan_d, lsgan_g, weighted_ce
from segrenorm.vocabulary import DIRECTIONS, SITES, check_direction

if TYPE_CHECKING:
    from segrenorm.models.translator import Translator

__all__ = [
    "discriminator_half",
    "discriminator_step",
    "frozen_discriminators",
    "generator_half",
    "generator_step",
    "join_halves",
]


def _check_batch(model: Translator, batch: dict[str, Tensor]) -> None:
    keys = ["a", "b"]
    if model.kind.uses_segmentation:
        keys += ["a_label", "b_label"]
    missing = [k for k in keys if k not in batch]
    if missing:
        raise InputError(
            f"batch lacks {', '.join(missing)} (has {', '.join(sorted(batch)) or 'nothing'}): "
            f"the {model.kind.value} translator needs {', '.join(keys)}."
        )
    for site in ("a", "b"):
        check_image_batch(batch[site], model.context_slices, model.stride, f"batch[{site!r}]")


def frozen_discriminators(model: Translator) -> contextlib.AbstractContextManager[None]:
    """Context in which the discriminators' weights take no gradient (generator losses).

    :func:`generator_step` enters it itself; callers of :func:`generator_half` must.

    Args:
        model: the translator.
    """
    return _frozen([model.disc_a, model.disc_b])


def generator_half(
    model: Translator, batch: dict[str, Tensor], direction: str
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """The generator losses of one cycle: everything computed from one site's images.

    ``"AB"`` starts from ``a``: S(a), G(a | S(a)), Q(G(a)), F(G(a) | Q(G(a))),
    D_B(G(a)) and, with identity loss, F(a | S(a)); ``"BA"`` is the mirror image from
    ``b``. The two halves share no tensors, so their graphs can be built and
    back-propagated independently (even concurrently); :func:`generator_step` is their
    sum. Call it inside :func:`frozen_discriminators`.

    Args:
        model: the translator.
        batch: as for :func:`generator_step`.
        direction: ``"AB"`` or ``"BA"``.

    Returns:
        ``(total, terms, outputs)`` of this half, named as in :func:`generator_step`
        (``"AB"``: gan_ab, cycle_a, [identity_a], [seg_real_a, seg_trans_ab]; outputs
        fake_b, rec_a, [seg_a, seg_fake_b]).

    Raises:
        ConfigError: ``direction`` is neither ``"AB"`` nor ``"BA"``.
        InputError: the batch lacks images or labels, or has the wrong shape.
    """
    check_direction(direction)
    _check_batch(model, batch)
    src, dst = ("a", "b") if direction == "AB" else ("b", "a")
    gen, seg_in, ext_fwd = model.route(direction)
    back, seg_out, ext_back = model.route(direction[::-1])
    disc = model.disc_b if direction == "AB" else model.disc_a
    x, lw = batch[src], model.loss_cfg
    logits = seg_in(x) if seg_in is not None else None  # S(a): (B, C, h, w)
    fake = gen(x, model.embed(ext_fwd, logits))  # G(a | S(a))
    logits_fake = seg_out(fake) if seg_out is not None else None  # Q(G(a))
    rec = back(fake, model.embed(ext_back, logits_fake))  # F(G(a) | Q(G(a)))
    terms = {f"gan_{direction.lower()}": lsgan_g(disc(fake)), f"cycle_{src}": cycle_l1(x, rec)}
    scale = model.consistency_scale
    total = lw.gan * terms[f"gan_{direction.lower()}"]
    total = total + scale * lw.cycle * terms[f"cycle_{src}"]
    if lw.identity > 0:
        idt = back(x, model.embed(ext_back, logits))  # F(a | S(a))
        terms[f"identity_{src}"] = cycle_l1(x, idt)
        total = total + scale * lw.identity * terms[f"identity_{src}"]
    outputs = {f"fake_{dst}": fake.detach(), f"rec_{src}": rec.detach()}
    if logits is not None and logits_fake is not None:
        label, w = batch[f"{src}_label"], model.class_weights
        terms[f"seg_real_{src}"] = weighted_ce(logits, label, w)
        terms[f"seg_trans_{direction.lower()}"] = weighted_ce(logits_fake, label, w)
        total = total + lw.seg_real * terms[f"seg_real_{src}"]
        total = total + lw.seg_translated * terms[f"seg_trans_{direction.lower()}"]
        # max(...).indices is argmax (first maximum on ties) at a tenth of the cost here.
        outputs[f"seg_{src}"] = logits.detach().max(dim=1).indices
        outputs[f"seg_fake_{dst}"] = logits_fake.detach().max(dim=1).indices
    return total, terms, outputs


def generator_step(
    model: Translator, batch: dict[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Losses of the generators (and segmentation nets) for one batch.

    Args:
        model: the translator.
        batch: ``"a"``, ``"b"`` (B, k, h, w) in [-1, 1] (k: ``model.context_slices``); with
            segmentation also ``"a_label"``, ``"b_label"`` (B, h, w) int64 (the centre
            slices' labels).

    Returns:
        ``(total, terms, outputs)``: the weighted total loss; the unweighted terms
        (detached 0-d tensors: gan_ab, gan_ba, cycle_a, cycle_b, [identity_a,
        identity_b], [seg_real_a, seg_real_b, seg_trans_ab, seg_trans_ba]); detached
        outputs fake_b, rec_a, fake_a, rec_b and, with segmentation, argmax maps
        seg_a = S(a), seg_b = Q(b), seg_fake_b = Q(G(a)), seg_fake_a = S(F(b)).

    Raises:
        InputError: the batch lacks images or labels, or has the wrong shape.
    """
    with frozen_discriminators(model):
        halves = [generator_half(model, batch, d) for d in DIRECTIONS]
    return join_halves(halves)


def discriminator_half(
    model: Translator, batch: dict[str, Tensor], outputs: dict[str, Tensor], site: str
) -> tuple[Tensor, dict[str, Tensor]]:
    """Half the discriminator loss: ``0.5 * disc_a`` (site ``"A"``) or ``0.5 * disc_b``.

    Args:
        model: the translator.
        batch: the batch given to :func:`generator_step`.
        outputs: its outputs (``fake_a`` for site A, ``fake_b`` for site B).
        site: ``"A"`` or ``"B"``.

    Returns:
        ``(loss, terms)`` with the detached term ``disc_a`` or ``disc_b``.

    Raises:
        InputError: an unknown site, or the batch image or translation is missing.
    """
    if site not in SITES:
        raise InputError(f"site={site!r} is unknown: use 'A' or 'B'.")
    key = site.lower()
    if f"fake_{key}" not in outputs or key not in batch:
        raise InputError(
            f"discriminator_step needs batch[{key!r}] and the output fake_{key} of "
            f"generator_step; got batch keys {sorted(batch)} and outputs {sorted(outputs)}."
        )
    disc = model.disc_a if site == "A" else model.disc_b
    real, fake = _score_pair(disc, batch[key], outputs[f"fake_{key}"].detach())
    term = lsgan_d(real, fake)
    return 0.5 * term, {f"disc_{key}": term.detach()}


def discriminator_step(
    model: Translator, batch: dict[str, Tensor], outputs: dict[str, Tensor]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Least-squares discriminator loss on real images and (detached) translations.

    Args:
        model: the translator.
        batch: the batch given to :func:`generator_step`.
        outputs: its outputs (``fake_b``, ``fake_a``).

    Returns:
        ``(loss, terms)`` with loss = 0.5 * (disc_a + disc_b) and the detached terms
        ``disc_a``, ``disc_b``.

    Raises:
        InputError: the batch images or the translations are missing.
    """
    missing = [k for k in ("fake_a", "fake_b") if k not in outputs]
    if missing or "a" not in batch or "b" not in batch:
        raise InputError(
            "discriminator_step needs batch['a'], batch['b'] and the outputs of "
            f"generator_step (fake_a, fake_b); missing {missing or 'batch images'}."
        )
    halves = [discriminator_half(model, batch, outputs, site) for site in SITES]
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
            :func:`generator_half`.
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
