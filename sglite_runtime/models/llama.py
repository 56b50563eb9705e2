"""Llama decoder (and the shared pieces Qwen2, Qwen3 and Mistral are built from).

One decoder layer: fused add+RMSNorm → qkv_proj → (optional per-head q/k RMSNorm) → RoPE →
RadixAttention → o_proj → fused add+RMSNorm → gate_up_proj → SiLU·mul → down_proj.
Module names mirror HF's so checkpoint names map 1:1, except the fused ``qkv_proj`` and
``gate_up_proj`` which ``stacked_params_mapping`` fills from q/k/v and gate/up.

Variants differ only in ``AttentionFlags`` (biases and qk-norm), chosen by
``attention_flags(config)`` which subclasses override. Sliding-window layers (Mistral, Qwen2
with ``use_sliding_window``, Phi-3) come from the config by ``layer_sliding_window``; RoPE
modules are shared by all layers of one type (one cos/sin table, not one per layer).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from sglite_runtime.distributed import get_tp_size
from sglite_runtime.layers.activation import gated_activation
from sglite_runtime.layers.layernorm import RMSNorm
from sglite_runtime.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from sglite_runtime.layers.radix_attention import RadixAttention
from sglite_runtime.layers.rotary_embedding import RotaryEmbedding, rope_for_config, uses_per_layer_type_rope
from sglite_runtime.layers.vocab_parallel_embedding import (
    ParallelLMHead,
    VocabParallelEmbedding,
    vocab_parallel_logits,
)

if TYPE_CHECKING:
    from sglite_runtime.model_executor.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttentionFlags:
    """Per-architecture switches of the attention block."""

    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False  # Qwen3: RMSNorm over each head of q and k, before RoPE
    norm_cls: type[RMSNorm] = RMSNorm  # the q/k norm's flavour (Gemma: GemmaRMSNorm)


def get_head_dim(config: Any) -> int:
    """``config.head_dim`` when set (it may differ from hidden/heads), else hidden/heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def layer_type(config: Any, layer_id: int) -> str:
    """``"sliding_attention"`` or ``"full_attention"`` for layer ``layer_id``, as HF decides it:
    ``config.layer_types`` when the config has it (Qwen2/3, Gemma 3), else every layer slides
    when ``sliding_window`` is set (Mistral, Phi-3)."""
    types = getattr(config, "layer_types", None)
    if types:
        return types[layer_id]
    window = getattr(config, "sliding_window", None)
    uses = getattr(config, "use_sliding_window", True)
    return "sliding_attention" if window and uses else "full_attention"


def layer_sliding_window(config: Any, layer_id: int) -> int | None:
    """The attention window of layer ``layer_id`` (None: full causal attention)."""
    if layer_type(config, layer_id) != "sliding_attention":
        return None
    return getattr(config, "sliding_window", None) or None


class RopeTable:
    """One RoPE module per layer type, built on first use and shared by the layers."""

    def __init__(self, config: Any, head_dim: int):
        self.config, self.head_dim = config, head_dim
        # Gemma 3: {"sliding_attention": {...}, "full_attention": {...}} (or rope_local_base_freq).
        self.per_layer_type = uses_per_layer_type_rope(config)
        self._ropes: dict[str | None, RotaryEmbedding] = {}

    def get(self, layer_id: int) -> RotaryEmbedding:
        key = layer_type(self.config, layer_id) if self.per_layer_type else None
        if key not in self._ropes:
            self._ropes[key] = rope_for_config(self.config, self.head_dim, key)
        return self._ropes[key]


class LlamaMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool, dtype: torch.dtype, act: str = "silu"):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, bias=bias, params_dtype=dtype)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias, params_dtype=dtype)
        self.act_fn = gated_activation(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class LlamaAttention(nn.Module):
    def __init__(
        self,
        config: Any,
        layer_id: int,
        flags: AttentionFlags,
        dtype: torch.dtype,
        rope: RotaryEmbedding | None = None,
        scaling: float | None = None,
    ):
        super().__init__()
        hidden = config.hidden_size
        total_heads = config.num_attention_heads
        total_kv_heads = getattr(config, "num_key_value_heads", None) or total_heads
        self.head_dim = get_head_dim(config)
        self.qkv_proj = QKVParallelLinear(
            hidden, self.head_dim, total_heads, total_kv_heads, bias=flags.qkv_bias, params_dtype=dtype
        )
        self.num_heads = self.qkv_proj.num_heads  # per TP rank
        self.num_kv_heads = self.qkv_proj.num_kv_heads  # per TP rank
        self.q_size = self.qkv_proj.q_size
        self.kv_size = self.qkv_proj.kv_size
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, hidden, bias=flags.o_bias, params_dtype=dtype)
        self.qk_norm = flags.qk_norm
        if self.qk_norm:
            self.q_norm = flags.norm_cls(self.head_dim, eps=config.rms_norm_eps, params_dtype=dtype)
            self.k_norm = flags.norm_cls(self.head_dim, eps=config.rms_norm_eps, params_dtype=dtype)
        self.rotary_emb = rope if rope is not None else rope_for_config(config, self.head_dim)
        self.attn = RadixAttention(
            self.num_heads,
            self.head_dim,
            scaling if scaling is not None else self.head_dim**-0.5,
            self.num_kv_heads,
            layer_id=layer_id,
            sliding_window=layer_sliding_window(config, layer_id),
        )

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, forward_batch: "ForwardBatch") -> torch.Tensor:
        qkv = self.qkv_proj(hidden)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm:
            q = self.q_norm(q.reshape(-1, self.head_dim)).view(q.shape)
            k = self.k_norm(k.reshape(-1, self.head_dim)).view(k.shape)
        q, k = self.rotary_emb(positions, q, k, forward_batch)
        out = self.attn(q, k, v.contiguous(), forward_batch)
        return self.o_proj(out)


class LlamaDecoderLayer(nn.Module):
    def __init__(
        self, config: Any, layer_id: int, flags: AttentionFlags, dtype: torch.dtype, rope: RotaryEmbedding | None = None
    ):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_id, flags, dtype, rope)
        self.mlp = self.make_mlp(config, layer_id, dtype)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, params_dtype=dtype)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, params_dtype=dtype)

    def make_mlp(self, config: Any, layer_id: int, dtype: torch.dtype) -> nn.Module:
        """The feed-forward block of layer ``layer_id`` (MoE models override this)."""
        bias = bool(getattr(config, "mlp_bias", False))
        act = getattr(config, "hidden_act", None) or "silu"
        return LlamaMLP(config.hidden_size, config.intermediate_size, bias, dtype, act)

    def forward(
        self,
        positions: torch.Tensor,
        hidden: torch.Tensor,
        forward_batch: "ForwardBatch",
        residual: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # The residual add of the previous block is fused into this block's first norm.
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden, forward_batch)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class LlamaModel(nn.Module):
    def __init__(
        self, config: Any, flags: AttentionFlags, dtype: torch.dtype, layer_cls: type[nn.Module] = LlamaDecoderLayer
    ):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, params_dtype=dtype)
        ropes = RopeTable(config, get_head_dim(config))
        self.layers = nn.ModuleList(
            layer_cls(config, i, flags, dtype, ropes.get(i)) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps, params_dtype=dtype)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: "ForwardBatch") -> torch.Tensor:
        hidden = self.embed_tokens(input_ids)
        residual = None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, forward_batch, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden


class LlamaForCausalLM(nn.Module):
    """``hidden = model(input_ids, positions, forward_batch)``; ``logits = model.compute_logits(hidden)``.

    Besides the contract, it exposes what the KV pool needs: ``num_layers``,
    ``num_kv_heads`` (per TP rank) and ``head_dim``.
    """

    # (fused param name, checkpoint name, shard id) for the loader.
    stacked_params_mapping: list[tuple[str, str, str | int]] = [
        ("qkv_proj", "q_proj", "q"),
        ("qkv_proj", "k_proj", "k"),
        ("qkv_proj", "v_proj", "v"),
        ("gate_up_proj", "gate_proj", 0),
        ("gate_up_proj", "up_proj", 1),
    ]

    decoder_layer_cls: type[nn.Module] = LlamaDecoderLayer

    @classmethod
    def attention_flags(cls, config: Any) -> AttentionFlags:
        bias = bool(getattr(config, "attention_bias", False))
        return AttentionFlags(qkv_bias=bias, o_bias=bias, qk_norm=False)

    # What a config without `tie_word_embeddings` means (HF's default differs by family).
    tie_word_embeddings_default = False

    def build_model(self, config: Any) -> nn.Module:
        """The decoder stack; a family with other layers overrides this (e.g. Gemma 3)."""
        return LlamaModel(config, self.attention_flags(config), self.dtype, self.decoder_layer_cls)

    def __init__(self, config: Any, dtype: torch.dtype | None = None):
        super().__init__()
        self.config = config
        self.dtype = dtype or torch.get_default_dtype()
        # LlamaModel or a family's own stack with the same attributes (embed_tokens, layers).
        self.model: Any = cast(Any, self.build_model(config))
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", self.tie_word_embeddings_default))
        if self.tie_word_embeddings:
            self.lm_head = self.model.embed_tokens  # same Parameter; compute_logits uses its weight
        else:
            self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, params_dtype=self.dtype)
        self.vocab_size = config.vocab_size
        self.num_layers = config.num_hidden_layers
        self.head_dim = get_head_dim(config)
        first_layer: Any = self.model.layers[0]  # a decoder layer (ModuleList items are typed Module)
        self.num_kv_heads = first_layer.self_attn.num_kv_heads
        self.tp_size = get_tp_size()

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: "ForwardBatch") -> torch.Tensor:
        """Hidden states after the final norm, ``[num_tokens, hidden_size]``."""
        return self.model(input_ids, positions, forward_batch)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits ``[n, vocab_size]`` for hidden rows ``[n, hidden_size]``."""
        return vocab_parallel_logits(self.lm_head, hidden)
