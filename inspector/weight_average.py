"""An exponential moving average of a network's weights, kept beside it during training.

Small networks trained from scratch on a few hundred images wander from epoch to epoch: one
epoch's weights can rank defects well and the next badly. The average over the last few
epochs is steadier and usually better than any single step's weights, so validation, early
stopping and the stored version use it (torchvision's classification reference offers the same
as ``--model-ema``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


class WeightAverage(Generic[M]):
    """``module`` follows the trained model: after each step, w_avg += (1 - decay) (w - w_avg).

    Batch-norm running statistics are averaged the same way; integer buffers are copied. The
    decay ramps up from 0 over the first steps ((1 + t) / (10 + t)), so the average does not
    carry the random initial weights for long.
    """

    def __init__(self, model: M, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must lie in (0, 1), got {decay}")
        self.module: M = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.steps = 0

    @classmethod
    def over_epochs(cls, model: M, epochs: float, steps_per_epoch: int) -> WeightAverage[M]:
        """An average whose memory (1 / (1 - decay) steps) spans about ``epochs`` epochs."""
        return cls(model, 1.0 - 1.0 / max(2.0, epochs * steps_per_epoch))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (10 + self.steps))
        averaged = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = averaged[name]
            if target.dtype.is_floating_point:
                target.lerp_(value.to(target.dtype), 1.0 - decay)
            else:
                target.copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "steps": self.steps, "decay": self.decay}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.steps = int(state["steps"])
        self.decay = float(state["decay"])
