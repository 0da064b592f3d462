"""Choosing the compute device and the mixed-precision context for it."""

from __future__ import annotations

import contextlib
import logging

import torch

from inspector.errors import ConfigurationError

log = logging.getLogger(__name__)


def select_device(name: str = "auto") -> torch.device:
    """``auto`` takes the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigurationError(f"device {name!r} asked for, but this machine has no CUDA device")
    return device


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the GPU supports it, float16 otherwise; None (full precision) on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    dtype = amp_dtype(device)
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
