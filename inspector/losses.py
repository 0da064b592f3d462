"""Image-level classification losses."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class FocalLoss(nn.Module):
    """Cross-entropy scaled by ``(1 - p)^gamma``, p the probability of the true class.

    Images the network already classifies with confidence add little; the hard ones (a faint
    defect at the edge of a tile, a good tile that looks like a break) carry the gradient
    (Lin et al., 2017). ``gamma`` 0 is plain cross-entropy. Class weights and the mean work
    as in ``nn.CrossEntropyLoss``: the sum is divided by the weights of the batch's labels.
    """

    def __init__(
        self, gamma: float, weight: torch.Tensor | None = None, label_smoothing: float = 0.0
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.label_smoothing = label_smoothing
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        per_image = F.cross_entropy(
            logits,
            labels,
            weight=self.weight,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        true_p = F.softmax(logits, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
        scaled = (1.0 - true_p).clamp(min=0.0).pow(self.gamma) * per_image
        norm = (
            self.weight[labels].sum()
            if self.weight is not None
            else labels.new_tensor(labels.shape[0], dtype=scaled.dtype)
        )
        return scaled.sum() / norm
