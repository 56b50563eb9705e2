"""Rotary position embedding, NeoX style (HF's ``rotate_half``), with a cos/sin cache.

The inverse frequencies follow HF ``modeling_rope_utils`` exactly: ``default``, ``linear`` and
``llama3`` are computed here; ``yarn``, ``longrope`` and ``dynamic`` call HF's own
``ROPE_INIT_FUNCTIONS`` on the model config, so they cannot drift from the reference. cos/sin
are computed in fp32 (times the type's attention factor) then cast to the query dtype before
the rotation, as HF does, so fp32 results are bit-identical and bf16 ones round the same way.

Two types depend on the sequence length, which HF takes as ``max(position_ids) + 1`` of the
forward; sglite uses each request's own length after the forward (the same number for a
single sequence, and independent of what else is in the batch):

* ``longrope``: the ``long_factor`` frequencies when that length exceeds
  ``original_max_position_embeddings``, else the ``short_factor`` ones;
* ``dynamic`` (NTK): past ``max_position_embeddings`` the base grows with the length.

A cached token keeps the rotation it was computed with, as in HF generation with a KV cache.
``partial_rotary_factor < 1`` rotates only the first ``rotary_dim`` dims of each head (Phi-4-mini).
"""

from __future__ import annotations

import copy
import logging
import math
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from sglite_runtime.model_executor.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)

_DEFAULT_THETA = 10000.0
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn", "longrope", "dynamic")


def rope_config_from_hf(hf_config: Any, layer_type: str | None = None) -> tuple[float, dict | None]:
    """``(rope_theta, rope_scaling)`` from an HF config.

    transformers 5.x keeps everything in ``config.rope_parameters`` (``rope_theta``,
    ``rope_type``, ``factor``, ...), per layer type for models like Gemma 3 (pass
    ``layer_type``); older configs use ``rope_theta`` plus ``rope_scaling``. ``rope_scaling`` is
    None for plain RoPE.
    """
    params: Any = getattr(hf_config, "rope_parameters", None)
    local_base = getattr(hf_config, "rope_local_base_freq", None)
    if layer_type == "sliding_attention" and local_base and not _per_layer_type(params):
        # transformers 4.x Gemma 3: local layers use plain RoPE of rope_local_base_freq.
        return float(local_base), None
    if _per_layer_type(params):
        if layer_type is None or layer_type not in params:
            raise ValueError(f"per-layer-type rope_parameters need a layer type among {sorted(params)}")
        params = params[layer_type]
    if isinstance(params, dict) and params:
        theta = float(params.get("rope_theta", getattr(hf_config, "rope_theta", None) or _DEFAULT_THETA))
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    else:
        theta = float(getattr(hf_config, "rope_theta", None) or _DEFAULT_THETA)
        scaling = dict(getattr(hf_config, "rope_scaling", None) or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default" and float(scaling.get("partial_rotary_factor", 1.0)) == 1.0:
        return theta, None
    scaling["rope_type"] = rope_type
    return theta, scaling


def _per_layer_type(params: Any) -> bool:
    return isinstance(params, dict) and bool(params) and "rope_theta" not in params and all(
        isinstance(v, dict) for v in params.values()
    )


def uses_per_layer_type_rope(hf_config: Any) -> bool:
    """Whether RoPE differs by layer type (Gemma 3: local and global layers)."""
    return _per_layer_type(getattr(hf_config, "rope_parameters", None)) or bool(
        getattr(hf_config, "rope_local_base_freq", None))


def _default_inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    # On the CPU, like HF's init, whatever device the model is being built on.
    exps = torch.arange(0, rotary_dim, 2, dtype=torch.int64, device="cpu").to(torch.float32) / rotary_dim
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


def _cos_sin(inv_freq: torch.Tensor, positions: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 ``cos, sin [T, rotary_dim]`` (times ``scale``) at ``positions``, as HF computes them."""
    freqs = positions.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * scale, emb.sin() * scale


class RotaryEmbedding(nn.Module):
    """Applies RoPE to flattened ``q [T, nh*d]`` and ``k [T, nkv*d]`` at ``positions [T]``.

    Args:
        inv_freq: ``[rotary_dim / 2]`` frequencies (default RoPE of ``base`` when None).
        rotary_dim: leading dims of each head that rotate (the rest pass through).
        attention_scaling: factor on cos/sin (yarn's and longrope's ``attention_factor``).
        long_inv_freq, long_after: longrope's second frequency set, used by tokens of requests
            longer than ``long_after`` tokens.
        dynamic: ``(factor, max_position_embeddings)`` for dynamic NTK scaling.
    """

    # Buffers (register_buffer in __init__; the long_* pair only with long_inv_freq).
    cos_cache: torch.Tensor
    sin_cache: torch.Tensor
    long_cos_cache: torch.Tensor
    long_sin_cache: torch.Tensor

    def __init__(
        self,
        head_dim: int,
        max_position: int,
        base: float,
        inv_freq: torch.Tensor | None = None,
        rotary_dim: int | None = None,
        attention_scaling: float = 1.0,
        long_inv_freq: torch.Tensor | None = None,
        long_after: int | None = None,
        dynamic: tuple[float, int] | None = None,
    ):
        super().__init__()
        self.head_dim = head_dim
        self.rotary_dim = rotary_dim or head_dim
        self.max_position = max_position
        self.base = base
        self.attention_scaling = float(attention_scaling)
        self.long_after = long_after
        self.dynamic = dynamic
        if inv_freq is None:
            inv_freq = _default_inv_freq(self.rotary_dim, base)
        # Built on the CPU and moved, so every device gets the same table.
        device = torch.get_default_device()
        t = torch.arange(max_position, dtype=torch.float32, device="cpu")
        cos, sin = _cos_sin(inv_freq.cpu(), t, self.attention_scaling)
        self.register_buffer("cos_cache", cos.to(device), persistent=False)
        self.register_buffer("sin_cache", sin.to(device), persistent=False)
        if long_inv_freq is not None:
            cos, sin = _cos_sin(long_inv_freq.cpu(), t, self.attention_scaling)
            self.register_buffer("long_cos_cache", cos.to(device), persistent=False)
            self.register_buffer("long_sin_cache", sin.to(device), persistent=False)

    @property
    def needs_seq_lens(self) -> bool:
        """Whether ``forward`` needs each token's request length (longrope, dynamic)."""
        return self.long_after is not None or self.dynamic is not None

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # Not ``_apply``: that is nn.Module's hook that .to()/.float() call on every submodule.
        shape = x.shape
        x = x.view(shape[0], -1, self.head_dim)
        if self.rotary_dim == self.head_dim:
            return (x * cos + self._rotate_half(x) * sin).view(shape)
        rot, rest = x[..., : self.rotary_dim], x[..., self.rotary_dim :]
        return torch.cat((rot * cos + self._rotate_half(rot) * sin, rest), dim=-1).view(shape)

    def _dynamic_cos_sin(self, positions: torch.Tensor, seq_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HF ``_compute_dynamic_ntk_parameters`` per token, with its request length as seq_len."""
        assert self.dynamic is not None  # only called for dynamic NTK
        factor, max_pos = self.dynamic
        dim = self.rotary_dim
        lens = torch.clamp(seq_lens.to(torch.int64), min=max_pos)
        base = self.base * ((factor * lens / max_pos) - (factor - 1)) ** (dim / (dim - 2))
        exps = torch.arange(0, dim, 2, dtype=torch.int64, device=positions.device).to(torch.float32) / dim
        inv_freq = 1.0 / (base.to(torch.float32)[:, None] ** exps[None, :])  # [T, dim/2]
        freqs = positions.to(torch.float32)[:, None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.attention_scaling, emb.sin() * self.attention_scaling

    def forward(
        self,
        positions: torch.Tensor,
        q: torch.Tensor,
        k: torch.Tensor,
        forward_batch: "ForwardBatch | None" = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dynamic is not None:
            # Positions past the table only occur in requests longer than it, which use the
            # dynamic frequencies below: any in-range row will do for them here.
            table_pos = positions.clamp(max=self.max_position - 1)
        else:
            table_pos = positions
        cos, sin = self.cos_cache[table_pos], self.sin_cache[table_pos]
        if self.needs_seq_lens:
            if forward_batch is None:
                raise ValueError("longrope/dynamic RoPE needs the forward batch (each token's request length)")
            lens = forward_batch.token_seq_lens()
            if self.long_after is not None:
                use_long = (lens > self.long_after)[:, None]
                cos = torch.where(use_long, self.long_cos_cache[positions], cos)
                sin = torch.where(use_long, self.long_sin_cache[positions], sin)
            else:
                dyn_cos, dyn_sin = self._dynamic_cos_sin(positions, lens)
                assert self.dynamic is not None  # needs_seq_lens: longrope or dynamic
                grown = (lens > self.dynamic[1])[:, None]
                cos, sin = torch.where(grown, dyn_cos, cos), torch.where(grown, dyn_sin, sin)
        cos = cos.unsqueeze(1).to(q.dtype)  # [T, 1, rotary_dim]
        sin = sin.unsqueeze(1).to(q.dtype)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def extra_repr(self) -> str:
        return (f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, max_position={self.max_position}, "
                f"base={self.base}")


def _hf_rope_init(hf_config: Any, rope_type: str, layer_type: str | None, **kwargs: Any) -> tuple[torch.Tensor, float]:
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    # HF's init functions may standardize the config in place: work on a copy.
    cfg = copy.deepcopy(hf_config)
    if layer_type is not None:
        kwargs["layer_type"] = layer_type
    inv_freq, scaling = ROPE_INIT_FUNCTIONS[rope_type](cfg, "cpu", **kwargs)
    return inv_freq.to(torch.float32), float(scaling)


def get_rope(
    head_dim: int,
    max_position: int,
    base: float = _DEFAULT_THETA,
    rope_scaling: dict | None = None,
    hf_config: Any = None,
    layer_type: str | None = None,
) -> RotaryEmbedding:
    """A RoPE module for ``rope_scaling`` of any type in ``SUPPORTED_ROPE_TYPES``.

    ``yarn``, ``longrope`` and ``dynamic`` need ``hf_config`` (HF's init functions read it).
    """
    rope_type = "default" if not rope_scaling else rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"unsupported rope_type {rope_type!r}; sglite supports {', '.join(SUPPORTED_ROPE_TYPES)}")
    partial = float((rope_scaling or {}).get("partial_rotary_factor", 1.0))
    rotary_dim = int(head_dim * partial)
    if rotary_dim % 2 or rotary_dim <= 0:
        raise ValueError(f"partial_rotary_factor={partial} gives an unusable rotary_dim {rotary_dim}")
    if rope_type in ("yarn", "longrope", "dynamic") and hf_config is None:
        raise ValueError(f"rope_type {rope_type!r} needs the model config")
    kwargs: dict[str, Any] = {"rotary_dim": rotary_dim}
    scaling: dict = rope_scaling or {}  # non-empty for every rope_type but "default"
    if rope_type == "default":
        inv_freq = _default_inv_freq(rotary_dim, base)
    elif rope_type == "linear":
        inv_freq = _default_inv_freq(rotary_dim, base) / scaling["factor"]
    elif rope_type == "llama3":
        inv_freq = _llama3_inv_freq(_default_inv_freq(rotary_dim, base), scaling, max_position)
    elif rope_type == "yarn":
        inv_freq, kwargs["attention_scaling"] = _hf_rope_init(hf_config, "yarn", layer_type)
    elif rope_type == "longrope":
        original = scaling.get("original_max_position_embeddings") or getattr(
            hf_config, "original_max_position_embeddings")
        inv_freq, kwargs["attention_scaling"] = _hf_rope_init(hf_config, "longrope", layer_type)
        kwargs["long_inv_freq"], _ = _hf_rope_init(hf_config, "longrope", layer_type, seq_len=original + 1)
        kwargs["long_after"] = int(original)
    else:  # dynamic: the table holds the unscaled frequencies, used up to max_position_embeddings
        inv_freq, kwargs["attention_scaling"] = _hf_rope_init(hf_config, "dynamic", layer_type)
        kwargs["dynamic"] = (float(scaling["factor"]), int(hf_config.max_position_embeddings))
    return RotaryEmbedding(head_dim, max_position, base, inv_freq, **kwargs)


def rope_for_config(hf_config: Any, head_dim: int, layer_type: str | None = None, max_position: int | None = None) -> RotaryEmbedding:
    """The RoPE module an HF config asks for (per ``layer_type`` for Gemma 3-style configs)."""
    theta, scaling = rope_config_from_hf(hf_config, layer_type)
    max_position = max_position or hf_config.max_position_embeddings
    return get_rope(head_dim, max_position, theta, scaling, hf_config=hf_config, layer_type=layer_type)
