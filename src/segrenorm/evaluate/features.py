"""The feature space for KID and FID: a multitask autoencoder trained on both domains.

Following the paper's evaluation, a residual encoder-decoder *without* skip connections
reconstructs slices of both scanners (L1) while a head on the bottleneck classifies the
scanner (BCE). With no skips, everything the decoder needs passes through the bottleneck,
and the domain head makes that code sensitive to what separates the scanners. A slice's
feature vector is the global average of its bottleneck, (B, feature_dim).

The network has no normalisation layers on purpose: instance norm would remove per-image
brightness and contrast, which are exactly what differs between scanners. Training is
budgeted for CPUs: random square crops (convolutions only, so features of whole slices
are still defined), Adam, a constant learning rate then linear decay.

The domain head keeps pushing the two domains' features apart, so their scale (and with it
KID and FID) grows with training: compare methods within one trained autoencoder, e.g. as
ratios to the source-vs-target distance, never across configs or seeds.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a = rng.uniform(-1, 1, (8, 16, 16)).astype(np.float32)
    >>> cfg = AutoencoderConfig(width=4, depth=2, feature_dim=8, iterations=2,
    ...                         decay_iterations=0, batch_size=4, crop_size=None)
    >>> model = train_autoencoder(a, -a, cfg)
    >>> extract_features(model, a).shape
    (8, 8)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view
from torch import Tensor, nn

from segrenorm.errors import ConfigError, InputError
from segrenorm.models.nn.blocks import conv3x3, down_conv
from segrenorm.models.nn.segnet import check_image_batch
from segrenorm.training.optim import linear_decay

__all__ = ["AutoencoderConfig", "MultitaskAutoencoder", "extract_features", "train_autoencoder"]

_SLOPE = 0.2
_RANGE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class AutoencoderConfig:
    """Shape and training budget of the feature autoencoder.

    Args:
        width: channels after the first downsampling; doubles per level up to
            ``feature_dim``.
        depth: number of stride-2 downsamplings; slices (and crops) must have H and W
            divisible by ``2**depth``.
        feature_dim: channels of the bottleneck, i.e. the length of a feature vector.
        iterations: optimisation steps at the constant learning rate (0 and 0 returns the
            untrained network).
        decay_iterations: further steps with the learning rate decaying linearly to 0.
        batch_size: slices per step, half from each domain (even, >= 2).
        lr: Adam learning rate.
        domain_weight: weight of the domain BCE relative to the L1 reconstruction.
        crop_size: side of the random square training crops (a multiple of
            ``2**depth``; limited to the slice size); None trains on whole slices.
        seed: seeds the initialisation, the batch draws and the crops.
    """

    width: int = 16
    depth: int = 3
    feature_dim: int = 64
    iterations: int = 100
    decay_iterations: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    domain_weight: float = 1.0
    crop_size: int | None = 64
    seed: int = 0

    def __post_init__(self) -> None:
        minimum = {"width": 1, "depth": 1, "feature_dim": 1, "iterations": 0}
        minimum |= {"decay_iterations": 0, "batch_size": 2, "seed": 0, "crop_size": 1}
        for name, low in minimum.items():
            value = getattr(self, name)
            if name == "crop_size" and value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(
                    f"AutoencoderConfig.{name}={value!r} must be an integer >= {low}."
                )
        if self.depth > 8:
            raise ConfigError(f"AutoencoderConfig.depth={self.depth} is out of range: use 1..8.")
        if self.batch_size % 2:
            raise ConfigError(
                f"AutoencoderConfig.batch_size={self.batch_size} must be even: each batch holds "
                "the same number of slices from both domains."
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"AutoencoderConfig.lr={self.lr} must be a finite number > 0.")
        if not (math.isfinite(self.domain_weight) and self.domain_weight >= 0):
            raise ConfigError(
                f"AutoencoderConfig.domain_weight={self.domain_weight} must be finite and >= 0."
            )
        if self.crop_size is not None and self.crop_size % self.stride:
            raise ConfigError(
                f"AutoencoderConfig.crop_size={self.crop_size} must be a multiple of "
                f"2**depth = {self.stride}, or None for whole slices."
            )

    @property
    def stride(self) -> int:
        """H and W of slices and crops must be multiples of this."""
        return int(2**self.depth)

    @property
    def total_iterations(self) -> int:
        """Constant plus decaying steps."""
        return self.iterations + self.decay_iterations


class _Residual(nn.Module):
    """Pre-activation residual block without norm: ``x + conv(lrelu(conv(lrelu(x))))``.

    The second convolution starts at zero, so every block starts as the identity and a
    deep stack without normalisation still trains from the first step.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels, bias=True)
        self.conv2 = conv3x3(channels, channels, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.leaky_relu(x, _SLOPE))
        return x + self.conv2(F.leaky_relu(h, _SLOPE))


class MultitaskAutoencoder(nn.Module):
    """Residual encoder-decoder without skips, plus a domain logit from the bottleneck.

    Encoder: per level a 4x4 stride-2 convolution, leaky ReLU and a residual block;
    widths ``width * 2**level`` capped at, and ending in, ``feature_dim``. Decoder: the
    mirror image with 4x4 stride-2 transposed convolutions, ending in one channel and
    tanh. Domain head: global average pool of the bottleneck, then a linear layer.

    Args:
        width: channels after the first downsampling.
        depth: number of 2x downsamplings; H and W must be multiples of ``2**depth``.
        feature_dim: bottleneck channels (length of :meth:`features` vectors).

    Example:
        >>> net = MultitaskAutoencoder(width=4, depth=2, feature_dim=8)
        >>> recon, logit = net(torch.zeros(2, 1, 16, 12))
        >>> tuple(recon.shape), tuple(logit.shape), tuple(net.features(recon).shape)
        ((2, 1, 16, 12), (2,), (2, 8))
    """

    def __init__(self, *, width: int = 16, depth: int = 3, feature_dim: int = 64) -> None:
        super().__init__()
        if min(width, depth, feature_dim) < 1:
            raise ConfigError(
                f"MultitaskAutoencoder: {width=}, {depth=}, {feature_dim=} must be >= 1."
            )
        self.depth = depth
        self.feature_dim = feature_dim
        widths = [1] + [min(width * 2**k, feature_dim) for k in range(depth - 1)] + [feature_dim]
        encoder: list[nn.Module] = []
        for k in range(1, depth + 1):
            encoder += [
                down_conv(widths[k - 1], widths[k]),
                nn.LeakyReLU(_SLOPE),
                _Residual(widths[k]),
            ]
        decoder: list[nn.Module] = []
        for k in range(depth, 0, -1):
            decoder += [_Residual(widths[k]), nn.ConvTranspose2d(widths[k], widths[k - 1], 4, 2, 1)]
            decoder.append(nn.LeakyReLU(_SLOPE) if k > 1 else nn.Tanh())
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        self.domain_head = nn.Linear(feature_dim, 1)
        self._init_weights()

    @classmethod
    def from_config(cls, config: AutoencoderConfig) -> MultitaskAutoencoder:
        """Build the (untrained) network that ``config`` describes."""
        return cls(width=config.width, depth=config.depth, feature_dim=config.feature_dim)

    @property
    def stride(self) -> int:
        """H and W must be multiples of this."""
        return int(2**self.depth)

    def _init_weights(self) -> None:
        # He init for leaky ReLU; segrenorm.models.nn.init's N(0, 0.02) suits normalised nets but
        # would shrink the signal at every layer of this norm-free one.
        gain = nn.init.calculate_gain("leaky_relu", _SLOPE)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
                taps = module.kernel_size[0] * module.kernel_size[1]
                if isinstance(module, nn.ConvTranspose2d):  # each output sees k²/s² taps
                    taps //= module.stride[0] * module.stride[1]
                nn.init.normal_(module.weight, 0.0, gain / math.sqrt(module.in_channels * taps))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, _Residual):
                nn.init.zeros_(module.conv2.weight)
        nn.init.normal_(self.domain_head.weight, 0.0, 1.0 / math.sqrt(self.feature_dim))
        nn.init.zeros_(self.domain_head.bias)

    def encode(self, x: Tensor) -> Tensor:
        """Bottleneck maps (B, feature_dim, H / 2**depth, W / 2**depth) of images (B, 1, H, W)."""
        check_image_batch(x, 1, self.stride, "MultitaskAutoencoder")
        return self.encoder(x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Reconstruct images and classify their domain.

        Args:
            x: images (B, 1, H, W) in [-1, 1], H and W multiples of :attr:`stride`.

        Returns:
            ``(reconstruction, domain_logit)``: (B, 1, H, W) in [-1, 1] and (B,), where a
            positive logit means domain b (label 1).
        """
        z = self.encode(x)  # (B, feature_dim, h, w)
        return self.decoder(z), self.domain_head(z.mean(dim=(2, 3))).squeeze(1)

    def features(self, x: Tensor) -> Tensor:
        """Feature vectors (B, feature_dim): the global average of the bottleneck."""
        return self.encode(x).mean(dim=(2, 3))


def _check_slices(slices: np.ndarray, name: str, stride: int, *, check_range: bool) -> None:
    if slices.ndim != 3 or 0 in slices.shape:
        raise InputError(
            f"{name}: expected a non-empty stack of 2D slices (N, H, W), got {slices.shape}."
        )
    if slices.shape[1] % stride or slices.shape[2] % stride:
        raise InputError(
            f"{name}: slice size {slices.shape[1]}x{slices.shape[2]} (stack {slices.shape}) "
            f"is not a multiple of 2**depth = {stride}: pad or crop the slices."
        )
    if not np.isfinite(slices).all():
        raise InputError(f"{name}: the slices {slices.shape} hold NaN or inf values.")
    if check_range:
        low, high = float(slices.min()), float(slices.max())
        if low < -1 - _RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
            raise InputError(
                f"{name}: intensities span [{low:.4g}, {high:.4g}] in {slices.shape}; the "
                "autoencoder expects slices scaled to [-1, 1] (see segrenorm.data.slicing)."
            )


def _learning_rate(config: AutoencoderConfig, step: int) -> float:
    """Constant, then linear decay that reaches lr / (decay + 1) on the last step."""
    return config.lr * linear_decay(
        step, constant=config.iterations - 1, decay=config.decay_iterations + 1
    )


def _draw(
    slices: np.ndarray, count: int, crop: tuple[int, int], rng: np.random.Generator
) -> np.ndarray:
    """``count`` random slices (with replacement), each cut to a random ``crop`` window."""
    windows = sliding_window_view(slices, crop, axis=(1, 2))  # (N, H-h+1, W-w+1, h, w), a view
    index = [rng.integers(0, n, size=count) for n in windows.shape[:3]]
    return np.ascontiguousarray(windows[index[0], index[1], index[2]])


def train_autoencoder(
    a: np.ndarray,
    b: np.ndarray,
    config: AutoencoderConfig,
    *,
    progress: Callable[[int, int, float], None] | None = None,
    device: torch.device | str = "cpu",
) -> MultitaskAutoencoder:
    """Train the feature autoencoder on slices of two domains.

    Every step draws ``batch_size / 2`` random slices (random crops when
    ``config.crop_size`` is set) from each domain, labelled 0 for ``a`` and 1 for ``b``,
    and minimises ``L1(reconstruction) + domain_weight * BCE(domain)``. The run is
    deterministic for a given seed and device, and leaves torch's global RNG untouched.

    Args:
        a: domain-0 slices (N, H, W) in [-1, 1].
        b: domain-1 slices (M, H, W) in [-1, 1], same H and W.
        config: network shape and training budget.
        progress: called after every step with ``(step, total_steps, loss)``.
        device: where to train.

    Returns:
        The trained network, in eval mode, on ``device``.

    Raises:
        InputError: stacks that are not (N, H, W), sizes not divisible by ``2**depth``,
            differing slice sizes, non-finite values or values outside [-1, 1].
    """
    a = np.asarray(a, dtype=np.float32)
    b = np.asarray(b, dtype=np.float32)
    _check_slices(a, "train_autoencoder(a)", config.stride, check_range=True)
    _check_slices(b, "train_autoencoder(b)", config.stride, check_range=True)
    if a.shape[1:] != b.shape[1:]:
        raise InputError(
            f"train_autoencoder: the domains' slice sizes differ, a {a.shape} vs b {b.shape}; "
            "pad both to one size."
        )
    crop_size = config.crop_size or max(a.shape[1:])
    crop = (min(crop_size, a.shape[1]), min(crop_size, a.shape[2]))
    half = config.batch_size // 2
    rng = np.random.default_rng(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = MultitaskAutoencoder.from_config(config)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    labels = torch.cat([torch.zeros(half), torch.ones(half)]).to(device)
    total = config.total_iterations
    for step in range(total):
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(config, step)
        batch = np.concatenate([_draw(a, half, crop, rng), _draw(b, half, crop, rng)])
        x = torch.from_numpy(batch).unsqueeze(1).to(device)  # (B, 1, h, w)
        recon, logit = model(x)
        loss = F.l1_loss(recon, x) + config.domain_weight * (
            F.binary_cross_entropy_with_logits(logit, labels)
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if progress is not None:
            progress(step + 1, total, float(loss.detach()))
    return model.eval()


def extract_features(
    model: MultitaskAutoencoder, slices: np.ndarray, *, batch_size: int = 64
) -> np.ndarray:
    """Feature vectors of whole slices, for :func:`segrenorm.evaluate.distances.kid` / ``fid``.

    Args:
        model: a trained :class:`MultitaskAutoencoder` (its device is used).
        slices: (N, H, W) slices in [-1, 1], H and W multiples of ``model.stride``.
        batch_size: slices per forward pass.

    Returns:
        float64 array (N, feature_dim).

    Raises:
        InputError: a stack that is not (N, H, W), sizes not divisible by the stride or
            non-finite values.
    """
    if batch_size < 1:
        raise ConfigError(f"extract_features: batch_size={batch_size} must be >= 1.")
    slices = np.asarray(slices, dtype=np.float32)
    _check_slices(slices, "extract_features", model.stride, check_range=False)
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, slices.shape[0], batch_size):
            x = torch.from_numpy(slices[start : start + batch_size]).unsqueeze(1).to(device)
            out.append(model.features(x).double().cpu().numpy())
    return np.concatenate(out)
