"""An exponential moving average of the translator's weights, used for inference.

Adversarial training makes the generators' weights wander around a good solution from
step to step (the translations flicker between checkpoints). Averaging the weights over
the last few hundred steps (Polyak averaging, as in progressive GANs and EDM) gives a
generator that is, in expectation, nearer the centre of that wandering. The average
covers every network used at inference (generators, segmentation nets, semantic
extractors), not the discriminators. Checkpoints store it under ``"ema"``;
:func:`segrenorm.models.checkpoint.load_translator` loads it instead of the raw weights.

Example:
    >>> ema = WeightAverage(model, decay=0.99)  # doctest: +SKIP
    >>> ema.update(model, step)  # after each generator update  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from segrenorm.errors import ConfigError

__all__ = ["EMA_EXCLUDED_PREFIXES", "WeightAverage"]

#: State-dict prefixes not averaged: the discriminators are not used at inference.
EMA_EXCLUDED_PREFIXES = ("disc_a.", "disc_b.")


class WeightAverage:
    """Exponential moving average of a model's inference weights.

    The effective decay at step ``t`` is ``min(decay, (1 + t) / (10 + t))``, so the early
    average is not dominated by the initial weights.

    Args:
        model: the translator whose ``state_dict()`` is averaged.
        decay: the long-run decay in [0, 1); 0.99 averages over about 100 steps.
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ConfigError(f"EMA decay {decay} must lie in [0, 1)")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] = {
            key: value.detach().clone()
            for key, value in model.state_dict().items()
            if not key.startswith(EMA_EXCLUDED_PREFIXES)
        }

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Move the average towards the model's current weights.

        Args:
            model: the same model as at construction.
            step: completed iterations (sets the warm-start decay).
        """
        decay = min(self.decay, (1.0 + step) / (10.0 + step))
        state = model.state_dict()
        floats: list[torch.Tensor] = []
        currents: list[torch.Tensor] = []
        for key, average in self.shadow.items():
            current = state[key].detach()
            if average.is_floating_point() and current.dtype == average.dtype:
                floats.append(average)
                currents.append(current)
            elif average.is_floating_point():
                average.lerp_(current.to(average.dtype), 1.0 - decay)
            else:  # counters and the like follow the model
                average.copy_(current)
        if floats:  # one multi-tensor kernel instead of one lerp per tensor
            torch._foreach_lerp_(floats, currents, 1.0 - decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, keyed like the model's state dict."""
        return self.shadow

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore averaged weights saved by :meth:`state_dict`.

        Raises:
            KeyError: the saved keys differ from this model's.
        """
        if set(state) != set(self.shadow):
            missing = sorted(set(self.shadow) ^ set(state))[:3]
            raise KeyError(f"EMA weights do not match the model (e.g. {missing})")
        for key, value in state.items():
            self.shadow[key].copy_(value)
