"""Gated activations."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeluAndMul(nn.Module):
    """``gelu_tanh(x[..., :d]) * x[..., d:]``: HF's ``gelu_pytorch_tanh`` gate (Gemma)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.gelu(x[..., :d], approximate="tanh") * x[..., d:]


def gated_activation(name: str) -> nn.Module:
    """The gate-times-up activation for an HF ``hidden_act`` name; ValueError for others."""
    if name in ("silu", "swish"):
        return SiluAndMul()
    if name in ("gelu_pytorch_tanh", "gelu_tanh"):
        return GeluAndMul()
    raise ValueError(f"unsupported hidden activation {name!r}; sglite supports silu and gelu_pytorch_tanh")


class SiluAndMul(nn.Module):
    """``silu(x[..., :d]) * x[..., d:]`` for ``x`` of width ``2d`` (the fused gate_up output)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]
