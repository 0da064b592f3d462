"""The defect classifier: torchvision's VGG feature stack with a global-average-pooling head.

The architecture is data (torchvision's ``cfgs``), so a stored model is rebuilt from its name,
class count and width alone. Pooling before the linear head makes the network accept any
input size and gives class activation maps for free: the head's weights applied to the last
feature maps.

A model can also be a set of such networks trained apart (``VGGEnsemble``): one module whose
logits are the log of its members' mean class probabilities, so everything downstream
(calibration, serving, export) treats it as one network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models import vgg as tv_vgg

from inspector.errors import ConfigurationError

# name -> (torchvision cfg key, batch norm)
ARCHITECTURES: dict[str, tuple[str, bool]] = {
    "vgg11": ("A", False),
    "vgg11_bn": ("A", True),
    "vgg13": ("B", False),
    "vgg13_bn": ("B", True),
    "vgg16": ("D", False),
    "vgg16_bn": ("D", True),
    "vgg19": ("E", False),
    "vgg19_bn": ("E", True),
}

MIN_CHANNELS = 8

# Average pooling makes the logits exactly the mean of the class activation maps; max pooling
# lets a small defect decide alone, which a few-pixel pit or a thin scratch on a large surface
# needs (the maps then still show where it is).
POOLS: dict[str, type[nn.Module]] = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}

# Output stride of the feature maps: 32 is torchvision's VGG; 16 leaves out its last max-pool
# (no weights, no conv work saved or added), so the class activation maps and the defect
# masks that supervise them have twice the resolution, and a defect a few pixels wide at the
# edge of a part covers a whole location rather than a quarter of one.
STRIDES = (16, 32)

# What the convolutions see beyond the image's edge: torchvision's zeros, or the image
# continued (mirrored, or its edge pixels repeated). With zeros every edge looks alike to the
# network whatever lies along it, and a crack or notch within a few pixels of the frame's
# border sits where the features are half padding.
PADDING_MODES: dict[str, Literal["zeros", "reflect", "replicate"]] = {
    "zeros": "zeros",
    "reflect": "reflect",
    "replicate": "replicate",
}
PADDINGS = tuple(PADDING_MODES)


@dataclass(frozen=True)
class ModelSpec:
    """What is needed to rebuild a classifier before loading its weights."""

    arch: str
    num_classes: int
    width: float = 1.0
    dropout: float = 0.2
    pool: str = "avg"
    members: int = 1  # networks averaged (VGGEnsemble); 1 is a single network
    stride: int = 32  # output stride of the features (STRIDES)
    padding: str = "zeros"  # the convolutions' padding mode (PADDINGS)

    def __post_init__(self) -> None:
        if self.stride not in STRIDES:
            raise ConfigurationError(f"stride must be one of {STRIDES}, got {self.stride}")
        if self.padding not in PADDINGS:
            raise ConfigurationError(
                f"padding must be one of {', '.join(PADDINGS)}, got {self.padding!r}"
            )
        if self.members < 1:
            raise ConfigurationError(f"a model has at least 1 network, got {self.members}")

    def to_dict(self) -> dict[str, object]:
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "width": self.width,
            "dropout": self.dropout,
            "pool": self.pool,
            "members": self.members,
            "stride": self.stride,
            "padding": self.padding,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ModelSpec:
        return cls(
            arch=str(data["arch"]),
            num_classes=int(str(data["num_classes"])),
            width=float(str(data.get("width", 1.0))),
            dropout=float(str(data.get("dropout", 0.2))),
            pool=str(data.get("pool", "avg")),
            members=int(str(data.get("members", 1))),
            stride=int(str(data.get("stride", 32))),
            padding=str(data.get("padding", "zeros")),
        )


def layer_config(arch: str, width: float = 1.0) -> tuple[list[str | int], bool]:
    """torchvision's layer list for ``arch`` with every conv width scaled by ``width``."""
    if arch not in ARCHITECTURES:
        known = ", ".join(ARCHITECTURES)
        raise ConfigurationError(f"unknown architecture {arch!r}; expected one of: {known}")
    if not 0.0 < width <= 4.0:
        raise ConfigurationError(f"width multiplier must be in (0, 4], got {width}")
    key, batch_norm = ARCHITECTURES[arch]
    cfg: list[str | int] = [
        v if isinstance(v, str) else max(MIN_CHANNELS, round(int(v) * width))
        for v in tv_vgg.cfgs[key]
    ]
    return cfg, batch_norm


class VGGClassifier(nn.Module):
    """VGG features -> global average pool -> dropout -> linear head."""

    def __init__(
        self,
        *,
        arch: str,
        num_classes: int,
        width: float = 1.0,
        dropout: float = 0.2,
        pool: str = "avg",
        stride: int = 32,
        padding: str = "zeros",
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ConfigurationError(f"a classifier needs at least 2 classes, got {num_classes}")
        if pool not in POOLS:
            raise ConfigurationError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        cfg, batch_norm = layer_config(arch, width)
        self.spec = ModelSpec(
            arch,
            num_classes,
            width=width,
            dropout=dropout,
            pool=pool,
            stride=stride,
            padding=padding,
        )
        self.features = tv_vgg.make_layers(cfg, batch_norm=batch_norm)
        # Padding is no weight: a model of any padding loads the weights of any other.
        for layer in self.features:
            if isinstance(layer, nn.Conv2d):
                layer.padding_mode = PADDING_MODES[padding]
        if stride == 16:
            # torchvision's layers less the trailing max-pool: the same weights under the same
            # names, so a stride-32 model's features load into it and the other way round.
            self.features = self.features[:-1]
        channels = [v for v in cfg if isinstance(v, int)][-1]
        self.pool = POOLS[pool](1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # As torchvision initialises VGG, so training from scratch behaves the same.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.flatten(self.pool(self.features(x)), 1)
        return self.head(self.dropout(pooled))

    def forward_with_locations(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits as ``forward``, and the head's logits at every location (N, K, h, w).

        The location logits are the class activation map plus the head's bias: what training
        with defect masks supervises (``inspector.masks``).
        """
        fmap = self.features(x)
        logits = self.head(self.dropout(torch.flatten(self.pool(fmap), 1)))
        weight = self.head.weight.view(*self.head.weight.shape, 1, 1)
        return logits, F.conv2d(fmap, weight, self.head.bias)

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and class activation maps (N, K, h, w) at the last feature resolution."""
        fmap = self.features(x)
        logits = self.head(torch.flatten(self.pool(fmap), 1))
        cam = torch.einsum("kc,nchw->nkhw", self.head.weight, fmap)
        return logits, cam

    def conv_blocks(self) -> list[list[nn.Module]]:
        """The feature layers grouped into VGG's blocks (each ends with a max-pool)."""
        blocks: list[list[nn.Module]] = [[]]
        for layer in self.features:
            blocks[-1].append(layer)
            if isinstance(layer, nn.MaxPool2d):
                blocks.append([])
        return [b for b in blocks if b]

    def freeze_blocks(self, count: int) -> int:
        """Stop gradients through the first ``count`` conv blocks; returns how many were frozen."""
        blocks = self.conv_blocks()
        if not 0 <= count <= len(blocks):
            raise ConfigurationError(
                f"cannot freeze {count} blocks: {self.spec.arch} has {len(blocks)} conv blocks"
            )
        for block in blocks[:count]:
            for layer in block:
                for p in layer.parameters():
                    p.requires_grad_(False)
        return count


class VGGEnsemble(nn.Module):
    """Networks of one spec trained apart, served as one: the logits are the log of the
    members' mean class probabilities, so a softmax of them gives that mean exactly.

    Averaging probabilities rather than logits keeps one member's confident defect call
    visible in the mean: a set is there to catch what one network misses.
    """

    def __init__(self, members: Sequence[VGGClassifier]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigurationError(f"a model set needs at least 2 networks, got {len(members)}")
        specs = {m.spec for m in members}
        if len(specs) != 1:
            raise ConfigurationError(f"the networks of a set must share one spec, got {specs}")
        self.members = nn.ModuleList(members)
        self.spec = replace(members[0].spec, members=len(members))

    @property
    def networks(self) -> list[VGGClassifier]:
        return [m for m in self.members if isinstance(m, VGGClassifier)]

    def _mean_probabilities(self, logits: list[torch.Tensor]) -> torch.Tensor:
        log_probs = torch.stack([F.log_softmax(z.float(), dim=1) for z in logits])
        return torch.logsumexp(log_probs, dim=0) - math.log(len(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._mean_probabilities([m(x) for m in self.networks])

    def forward_with_cam(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The set's logits, and its members' class activation maps averaged."""
        outputs = [m.forward_with_cam(x) for m in self.networks]
        cam = torch.stack([c.float() for _, c in outputs]).mean(dim=0)
        return self._mean_probabilities([z for z, _ in outputs]), cam


# What the store loads and the classifier serves: one network or a set of them.
Network = VGGClassifier | VGGEnsemble


def build_model(
    *,
    arch: str,
    num_classes: int,
    width: float = 1.0,
    dropout: float = 0.2,
    pool: str = "avg",
    stride: int = 32,
    padding: str = "zeros",
) -> VGGClassifier:
    """A fresh (randomly initialised) classifier."""
    return VGGClassifier(
        arch=arch,
        num_classes=num_classes,
        width=width,
        dropout=dropout,
        pool=pool,
        stride=stride,
        padding=padding,
    )


def model_from_spec(spec: ModelSpec) -> Network:
    """The network ``spec`` describes, with fresh weights: a set when it has members."""
    networks = [
        build_model(
            arch=spec.arch,
            num_classes=spec.num_classes,
            width=spec.width,
            dropout=spec.dropout,
            pool=spec.pool,
            stride=spec.stride,
            padding=spec.padding,
        )
        for _ in range(spec.members)
    ]
    return networks[0] if spec.members == 1 else VGGEnsemble(networks)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
