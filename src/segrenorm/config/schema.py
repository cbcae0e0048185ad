"""Run configuration schema: the enums and frozen dataclasses of a run, and their checks.

A configuration is a tree of frozen dataclasses; :meth:`Config.validate` raises
:class:`~segrenorm.errors.ConfigError` naming the key of any value that cannot work.
Building one from a dict is :mod:`segrenorm.config.build`, ``section.field=value``
overrides are :mod:`segrenorm.config.overrides`, the named presets
:mod:`segrenorm.config.presets`, and loading a preset or YAML file
:mod:`segrenorm.config.load`.

Example:
    >>> cfg = Config()
    >>> cfg.model.translator.value, cfg.model.stride
    ('segrenorm', 16)
"""

from __future__ import annotations

import dataclasses
import enum
import json
import typing
from dataclasses import dataclass, field, fields
from typing import Any

from segrenorm.errors import ConfigError
from segrenorm.vocabulary import check_direction

__all__ = [
    "AmpMode",
    "Config",
    "DataConfig",
    "ExtractorInit",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "TranslatorKind",
]


class TranslatorKind(enum.Enum):
    """The four translators; all share one interface (see :mod:`segrenorm.models.translator`)."""

    CYCLEGAN = "cyclegan"
    S_CYCLEGAN = "s-cyclegan"
    SEMGAN = "semgan"
    SEGRENORM = "segrenorm"

    @property
    def uses_segmentation(self) -> bool:
        return self is not TranslatorKind.CYCLEGAN

    @property
    def renormalizes(self) -> bool:
        return self is TranslatorKind.SEGRENORM


class ExtractorInit(enum.Enum):
    """Weights of the semantic extractor: He/Kaiming normal, or the shared N(0, 0.02) draw."""

    KAIMING = "kaiming"
    NORMAL = "normal"


class AmpMode(enum.Enum):
    """Mixed precision: ``auto`` picks bf16 on CUDA devices that support it, fp32 on CPU."""

    AUTO = "auto"
    OFF = "off"
    BF16 = "bf16"
    FP16 = "fp16"


@dataclass(frozen=True)
class ModelConfig:
    """Network shapes.

    Args:
        translator: which of the four translators to build.
        ngf: generator base width; widths grow ngf -> 2ngf -> 4ngf -> 8ngf (capped at 8ngf).
        ndf: discriminator base width.
        n_downsample: stride-2 stages in the generator; its stride is ``2**n_downsample``.
        n_middle_blocks: residual blocks at the bottleneck.
        seg_ngf: segmentation U-Net base width.
        seg_depth: segmentation U-Net downsamplings; its stride is ``2**seg_depth``.
        embed_dim: size of the semantic embedding f(m) shared by all renorm layers.
        extractor_grid: side of the adaptive average pool in the semantic extractor.
        disc_layers: stride-2 convolutions in the PatchGAN (2 gives a 34x34 receptive field).
        residual_output: start the generator as the identity, ``tanh(atanh(x) + delta)``
            with the last convolution zero-initialised.
        film_init_std: standard deviation of renorm's initial gamma and beta for a unit-rms
            embedding (head weights N(0, film_init_std**2 / embed_dim)). Small, so renorm
            starts within a few percent of instance norm, but not 0, which zeroes the heads
            and with them the gradient into the semantic extractor at the start.
        extractor_init: weights of the semantic extractor; ``kaiming`` keeps the signal O(1)
            through its six layers, ``normal`` (N(0, 0.02)) shrinks it to ~1e-5.
        embed_norm: centre the extractor's input probabilities at 1/n_classes and
            standardise the embedding over its dimension, so that f(m) has rms 1 and
            differs between images from initialisation on.
    """

    translator: TranslatorKind = TranslatorKind.SEGRENORM
    ngf: int = 64
    ndf: int = 64
    n_downsample: int = 4
    n_middle_blocks: int = 2
    seg_ngf: int = 32
    seg_depth: int = 4
    embed_dim: int = 512
    extractor_grid: int = 2
    disc_layers: int = 2
    residual_output: bool = True
    film_init_std: float = 0.03
    extractor_init: ExtractorInit = ExtractorInit.KAIMING
    embed_norm: bool = True

    @property
    def stride(self) -> int:
        """Crops and padded slices must be divisible by this."""
        depth = self.n_downsample
        if self.translator.uses_segmentation:
            depth = max(depth, self.seg_depth)
        return int(2**depth)


@dataclass(frozen=True)
class LossConfig:
    """Loss weights (paper: lambda_GAN = 1, lambda_cyc = 10, lambda_seg = 1).

    Args:
        gan: least-squares adversarial weight.
        cycle: L1 cycle-consistency weight.
        identity: L1 identity weight (0 disables it).
        seg_real: cross-entropy weight of S(x) and Q(y) against their own labels.
        seg_translated: cross-entropy weight of Q(G(x)) and S(F(y)) against the input labels.
        class_weights: cross-entropy class weights; two values mean (background, every
            foreground class), otherwise one per class.
    """

    gan: float = 1.0
    cycle: float = 10.0
    identity: float = 0.0
    seg_real: float = 0.5
    seg_translated: float = 0.05
    class_weights: tuple[float, ...] = (0.5, 0.5)

    def weights_for(self, n_classes: int) -> tuple[float, ...]:
        """Expand ``class_weights`` to one weight per class."""
        if len(self.class_weights) == n_classes:
            return self.class_weights
        if len(self.class_weights) == 2:
            return (self.class_weights[0],) + (self.class_weights[1],) * (n_classes - 1)
        raise ConfigError(
            f"loss.class_weights has {len(self.class_weights)} values but the data has "
            f"{n_classes} classes: give 2 (background, foreground) or {n_classes}."
        )


@dataclass(frozen=True)
class OptimConfig:
    """Adam settings and the schedule: constant for ``iterations``, then linear to zero.

    Args:
        lr_seg: learning rate of the segmentation nets and semantic extractors.
        lr_gen: learning rate of the generators.
        lr_disc: learning rate of the discriminators.
        beta1: Adam beta1.
        beta2: Adam beta2.
        iterations: iterations at the constant learning rate.
        decay_iterations: iterations of linear decay to zero after them.
        warmup_iterations: iterations during which renorm's gamma/beta stay frozen at zero
            (a stability trick; 0 disables it).
        consistency_warmup: iterations over which the cycle and identity weights grow
            linearly from 0 to ``loss.cycle`` and ``loss.identity`` (0: full weight from the
            start). An identity-initialised generator pair sits at a kink of the L1 cycle
            loss, where the cycle pulls both generators back to the identity with a force
            the young discriminators cannot beat; easing it in lets them leave sooner.
        ema_decay: decay of the exponential moving average of the inference networks'
            weights that checkpoints carry and inference uses (0 disables it).
    """

    lr_seg: float = 2e-4
    lr_gen: float = 2e-4
    lr_disc: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    iterations: int = 100_000
    decay_iterations: int = 100_000
    warmup_iterations: int = 0
    consistency_warmup: int = 0
    ema_decay: float = 0.0

    @property
    def total_iterations(self) -> int:
        return self.iterations + self.decay_iterations


@dataclass(frozen=True)
class DataConfig:
    """What the trainer draws from the slice cache.

    Args:
        crop_size: side of the random square crops; 0 trains on whole padded cache slices
            (their sides must then be multiples of the stride).
        batch_size: samples per step (per process under DDP).
        n_classes: segmentation classes including background; must match the cache.
        foreground_bias: probability that a crop is centred on the foreground.
        semantic_dropout: SemGAN's probability of masking a random subset of classes.
        num_workers: DataLoader worker processes.
        direction: ``AB`` translates site A to B as G; ``BA`` swaps the sites (within the
            pair that ``source`` and ``target`` choose).
        fold: leave-one-subject-out / k-fold: train on every subject whose fold in the
            cache differs from this one (None uses the cache's train/test split).
        context_slices: 2.5-D input: k (odd) neighbouring slices of the same subject as
            channels, the slice itself at the centre (a neighbour missing from the cache is
            replaced by the nearest available slice toward the centre; see
            :mod:`segrenorm.data.context`). The generators translate the whole k-slice
            stack, the discriminators judge k-channel stacks and the segmentation nets
            predict the centre slice's labels; inference keeps the centre output. 1 is the
            2D model.
        source: the cache site (by name; a key ``A``, ``B``, ``C``, ... also works) trained
            on as site A, the source; None: the cache's first site. A cache of more than
            two sites needs both ``source`` and ``target``.
        target: the cache site trained on as site B, the target; None: the cache's second
            site (of two), or the other one when only ``source`` is given.
    """

    crop_size: int = 128
    batch_size: int = 4
    n_classes: int = 4
    foreground_bias: float = 0.5
    semantic_dropout: float = 0.0
    num_workers: int = 0
    direction: str = "AB"
    fold: int | None = None
    context_slices: int = 1
    source: str | None = None
    target: str | None = None


@dataclass(frozen=True)
class RunConfig:
    """Logging, checkpoints and devices.

    Args:
        seed: seeds Python, NumPy and torch (and the data stream).
        log_every: iterations between scalar logs.
        image_every: iterations between image grids (0 disables them).
        checkpoint_every: iterations between periodic checkpoints (0: final only).
        keep_checkpoints: periodic checkpoints kept besides ``last``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: mixed precision mode.
        compile: wrap the networks with ``torch.compile``.
        parallel_directions: on CPU, build and back-propagate the two cycle directions of
            each step in two threads (same computation; faster on few cores).
        channels_last: on CPU, keep weights and activations channels-last (NHWC): oneDNN's
            convolutions and the fused norm kernel run faster on it (the same function up to
            float rounding; BENCHMARKS.md, issue 14).
    """

    seed: int = 0
    log_every: int = 50
    image_every: int = 500
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    device: str = "auto"
    amp: AmpMode = AmpMode.AUTO
    compile: bool = False
    parallel_directions: bool = True
    channels_last: bool = True


@dataclass(frozen=True)
class Config:
    """A whole run: model, losses, optimisation, data and run settings."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict that ``config.build.config_from_dict`` turns back into this."""
        return typing.cast(dict[str, Any], _to_jsonable(self))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    def validate(self) -> Config:
        """Raise :class:`ConfigError` on values that cannot work; return self."""
        m, d, o, lo = self.model, self.data, self.optim, self.loss
        _positive("model.ngf", m.ngf)
        _positive("model.ndf", m.ndf)
        _positive("model.seg_ngf", m.seg_ngf)
        _positive("model.embed_dim", m.embed_dim)
        _positive("model.extractor_grid", m.extractor_grid)
        _in_range("model.n_downsample", m.n_downsample, 1, 6)
        _in_range("model.seg_depth", m.seg_depth, 1, 6)
        _in_range("model.n_middle_blocks", m.n_middle_blocks, 0, 16)
        _in_range("model.disc_layers", m.disc_layers, 1, 5)
        if not 0.0 <= m.film_init_std <= 1.0:
            raise ConfigError(
                f"model.film_init_std={m.film_init_std} must lie in [0, 1]: about 0.03 starts "
                "renorm near instance norm with gradient into the extractor; 0 zeroes the "
                "FiLM heads."
            )
        if d.crop_size < 0:
            raise ConfigError(
                f"data.crop_size={d.crop_size} must be 0 (whole slices) or a positive "
                f"multiple of the stride {m.stride}."
            )
        _positive("data.batch_size", d.batch_size)
        _in_range("data.n_classes", d.n_classes, 2, 255)
        _in_range("data.num_workers", d.num_workers, 0, 64)
        _probability("data.foreground_bias", d.foreground_bias)
        _probability("data.semantic_dropout", d.semantic_dropout)
        if d.crop_size % m.stride:
            raise ConfigError(
                f"data.crop_size={d.crop_size} is not divisible by the network's stride "
                f"{m.stride} (2**max(model.n_downsample, model.seg_depth)): use a multiple of "
                f"{m.stride}, e.g. {max(m.stride, (d.crop_size // m.stride) * m.stride)}."
            )
        if d.fold is not None:
            _in_range("data.fold", d.fold, 0, 10**6)
        k = d.context_slices
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0 or k > 31:
            raise ConfigError(
                f"data.context_slices={k!r} must be an odd number of slices in 1..31 (the slice "
                "itself at the centre, as many neighbours on each side): use 1 for 2D input or "
                "3, 5, ... for 2.5-D input."
            )
        check_direction(d.direction, name="data.direction")
        for name in ("source", "target"):
            if getattr(d, name) is not None and not str(getattr(d, name)).strip():
                raise ConfigError(f"data.{name} is empty: give a site name of the cache or none")
        if d.source is not None and d.source == d.target:
            raise ConfigError(
                f"data.source and data.target are both {d.source!r}: choose two different sites"
            )
        if d.semantic_dropout > 0 and m.translator is not TranslatorKind.SEMGAN:
            raise ConfigError(
                f"data.semantic_dropout={d.semantic_dropout} only applies to the semgan "
                f"translator, not {m.translator.value}: set it to 0 or use semgan."
            )
        for name in ("lr_seg", "lr_gen", "lr_disc"):
            _positive(f"optim.{name}", getattr(o, name))
        _probability("optim.beta1", o.beta1)
        _probability("optim.beta2", o.beta2)
        _in_range("optim.iterations", o.iterations, 1, 10**9)
        _in_range("optim.decay_iterations", o.decay_iterations, 0, 10**9)
        _in_range("optim.warmup_iterations", o.warmup_iterations, 0, 10**9)
        _in_range("optim.consistency_warmup", o.consistency_warmup, 0, 10**9)
        if not 0.0 <= o.ema_decay < 1.0:
            raise ConfigError(f"optim.ema_decay={o.ema_decay} must lie in [0, 1) (0 disables).")
        for name in ("gan", "cycle", "identity", "seg_real", "seg_translated"):
            if getattr(lo, name) < 0:
                raise ConfigError(f"loss.{name}={getattr(lo, name)} must be >= 0.")
        if any(w < 0 for w in lo.class_weights):
            raise ConfigError(f"loss.class_weights={lo.class_weights} must all be >= 0.")
        lo.weights_for(d.n_classes)
        _in_range("run.log_every", self.run.log_every, 1, 10**9)
        for name in ("image_every", "checkpoint_every", "keep_checkpoints"):
            _in_range(f"run.{name}", getattr(self.run, name), 0, 10**9)
        dev = self.run.device
        if not (dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:")):
            raise ConfigError(f"run.device={dev!r} is unknown: use auto, cpu, cuda or cuda:N.")
        return self


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name}={value} must be > 0.")


def _in_range(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range: use {low}..{high}.")


def _probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}={value} must lie in [0, 1].")


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple):
        return [_to_jsonable(v) for v in value]
    return value
