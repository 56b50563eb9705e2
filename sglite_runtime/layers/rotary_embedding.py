"""Rotary position embedding, NeoX style (HF's ``rotate_half``), with a cos/sin cache.

The inverse frequencies follow HF ``modeling_rope_utils`` exactly (default, ``linear`` and
``llama3``), and cos/sin are computed in fp32 then cast to the query dtype before the
rotation, as HF does, so fp32 results are bit-identical and bf16 ones round the same way.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torch import nn

logger = logging.getLogger(__name__)

_DEFAULT_THETA = 10000.0


def rope_config_from_hf(hf_config: Any) -> tuple[float, dict | None]:
    """``(rope_theta, rope_scaling)`` from an HF config.

    transformers 5.x keeps everything in ``config.rope_parameters`` (``rope_theta``,
    ``rope_type``, ``factor``, ...); older configs use ``rope_theta`` plus ``rope_scaling``.
    ``rope_scaling`` is None for plain RoPE.
    """
    params = getattr(hf_config, "rope_parameters", None)
    if isinstance(params, dict) and params:
        if "rope_theta" not in params and all(isinstance(v, dict) for v in params.values()):
            raise ValueError("per-layer-type rope_parameters are not supported")
        theta = float(params.get("rope_theta", getattr(hf_config, "rope_theta", None) or _DEFAULT_THETA))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(getattr(hf_config, "rope_theta", None) or _DEFAULT_THETA)
        scaling = dict(getattr(hf_config, "rope_scaling", None) or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return theta, None
    scaling["rope_type"] = rope_type
    return theta, scaling


def _default_inv_freq(head_dim: int, base: float) -> torch.Tensor:
    # On the CPU, like HF's init, whatever device the model is being built on.
    exps = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / head_dim
    return 1.0 / (base**exps)


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict, max_position: int) -> torch.Tensor:
    """Llama 3.1 frequency smoothing, the same arithmetic as HF ``_compute_llama3_parameters``."""
    factor = scaling["factor"]
    low_freq_factor = scaling["low_freq_factor"]
    high_freq_factor = scaling["high_freq_factor"]
    old_context_len = scaling.get("original_max_position_embeddings") or max_position
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # Long wavelengths are divided by factor, short ones kept, the middle band interpolated.
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """Applies RoPE to flattened ``q [T, nh*d]`` and ``k [T, nkv*d]`` at ``positions [T]``."""

    def __init__(self, head_dim: int, max_position: int, base: float, inv_freq: torch.Tensor | None = None):
        super().__init__()
        self.head_dim = head_dim
        self.max_position = max_position
        self.base = base
        if inv_freq is None:
            inv_freq = _default_inv_freq(head_dim, base)
        self._build_cache(inv_freq)

    def _build_cache(self, inv_freq: torch.Tensor) -> None:
        # position.float() * inv_freq is exactly what HF computes per forward; caching it is lossless.
        # Built on the CPU and moved, so every device gets the same table.
        t = torch.arange(self.max_position, dtype=torch.float32, device="cpu")
        freqs = t[:, None] * inv_freq.to(device="cpu", dtype=torch.float32)[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        device = torch.get_default_device()
        self.register_buffer("cos_cache", emb.cos().to(device), persistent=False)
        self.register_buffer("sin_cache", emb.sin().to(device), persistent=False)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def _apply(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.view(shape[0], -1, self.head_dim)
        return (x * cos + self._rotate_half(x) * sin).view(shape)

    def forward(
        self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cos_cache[positions].unsqueeze(1).to(q.dtype)  # [T, 1, d]
        sin = self.sin_cache[positions].unsqueeze(1).to(q.dtype)
        return self._apply(q, cos, sin), self._apply(k, cos, sin)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, max_position={self.max_position}, base={self.base}"


def get_rope(
    head_dim: int,
    max_position: int,
    base: float = _DEFAULT_THETA,
    rope_scaling: dict | None = None,
) -> RotaryEmbedding:
    """A RoPE module for ``rope_scaling`` of type None/``default``, ``linear`` or ``llama3``."""
    rope_type = "default" if not rope_scaling else rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    inv_freq = _default_inv_freq(head_dim, base)
    if rope_type == "default":
        pass
    elif rope_type == "linear":
        inv_freq = inv_freq / rope_scaling["factor"]
    elif rope_type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, rope_scaling, max_position)
    else:
        raise ValueError(f"unsupported rope_type {rope_type!r}; sglite supports default, linear and llama3")
    if rope_scaling and float(rope_scaling.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ValueError("partial_rotary_factor != 1 is not supported")
    return RotaryEmbedding(head_dim, max_position, base, inv_freq)
