"""Gemma 3 text (``Gemma3ForCausalLM``, e.g. gemma-3-1b/270m).

Differences from Llama, each as HF ``modeling_gemma3`` does it:

* RMSNorms scale by ``1 + weight`` in fp32 (``GemmaRMSNorm``), q/k are normed per head;
* four norms per layer ("sandwich"): input, post-attention, pre- and post-feedforward, with the
  residual added after the post norms;
* embeddings multiplied by ``sqrt(hidden_size)`` rounded to the model dtype;
* attention scale ``query_pre_attn_scalar ** -0.5``;
* interleaved layers (``config.layer_types``): sliding-window ones with the local RoPE base
  (``rope_parameters["sliding_attention"]``), global ones with the global base and scaling;
* ``gelu_pytorch_tanh`` gate, tied LM head, optional ``final_logit_softcapping``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from sglite_runtime.layers.layernorm import GemmaRMSNorm
from sglite_runtime.layers.rotary_embedding import RotaryEmbedding
from sglite_runtime.layers.vocab_parallel_embedding import VocabParallelEmbedding
from sglite_runtime.models.llama import (
    AttentionFlags, LlamaAttention, LlamaForCausalLM, LlamaMLP, RopeTable, get_head_dim,
)

if TYPE_CHECKING:
    from sglite_runtime.model_executor.forward_batch import ForwardBatch


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config: Any, layer_id: int, dtype: torch.dtype, rope: RotaryEmbedding):
        super().__init__()
        bias = bool(getattr(config, "attention_bias", False))
        flags = AttentionFlags(qkv_bias=bias, o_bias=bias, qk_norm=True, norm_cls=GemmaRMSNorm)
        scaling = float(config.query_pre_attn_scalar) ** -0.5
        self.self_attn = LlamaAttention(config, layer_id, flags, dtype, rope, scaling=scaling)
        act: Any = getattr(config, "hidden_activation", None) or getattr(config, "hidden_act", "gelu_pytorch_tanh")
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size, False, dtype, act)
        h, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(h, eps, dtype)
        self.post_attention_layernorm = GemmaRMSNorm(h, eps, dtype)
        self.pre_feedforward_layernorm = GemmaRMSNorm(h, eps, dtype)
        self.post_feedforward_layernorm = GemmaRMSNorm(h, eps, dtype)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, forward_batch: "ForwardBatch") -> torch.Tensor:
        attn = self.self_attn(positions, self.input_layernorm(hidden), forward_batch)
        hidden = hidden + self.post_attention_layernorm(attn)
        mlp = self.mlp(self.pre_feedforward_layernorm(hidden))
        return hidden + self.post_feedforward_layernorm(mlp)


class Gemma3Model(nn.Module):
    def __init__(self, config: Any, dtype: torch.dtype):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, params_dtype=dtype)
        ropes = RopeTable(config, get_head_dim(config))
        self.layers = nn.ModuleList(
            Gemma3DecoderLayer(config, i, dtype, ropes.get(i)) for i in range(config.num_hidden_layers)
        )
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps, dtype)
        # HF keeps sqrt(hidden) as an fp32 buffer and casts it to the weight dtype per forward.
        self.register_buffer(
            "embed_scale", torch.tensor(config.hidden_size**0.5, dtype=torch.float32).to(dtype), persistent=False
        )

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: "ForwardBatch") -> torch.Tensor:
        hidden = self.embed_tokens(input_ids) * self.embed_scale
        for layer in self.layers:
            hidden = layer(positions, hidden, forward_batch)
        return self.norm(hidden)


class Gemma3ForCausalLM(LlamaForCausalLM):
    """The Gemma 3 text model with sglite's model contract (see ``LlamaForCausalLM``)."""

    tie_word_embeddings_default = True

    def __init__(self, config: Any, dtype: torch.dtype | None = None):
        if getattr(config, "attn_logit_softcapping", None):
            raise ValueError("attn_logit_softcapping is not supported (Gemma 2-style attention soft-capping)")
        if getattr(config, "use_bidirectional_attention", False):
            raise ValueError("use_bidirectional_attention=True (an embedding model) is not supported")
        super().__init__(config, dtype)
        self.final_logit_softcapping = getattr(config, "final_logit_softcapping", None)

    def build_model(self, config: Any) -> nn.Module:
        return Gemma3Model(config, self.dtype)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits ``[n, vocab_size]``, soft-capped when the config asks for it."""
        logits = super().compute_logits(hidden)
        if self.final_logit_softcapping:
            cap = float(self.final_logit_softcapping)
            logits = torch.tanh(logits / cap) * cap
        return logits
