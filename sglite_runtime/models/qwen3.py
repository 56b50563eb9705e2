"""Qwen3: the Llama decoder with per-head RMSNorm on q and k before RoPE, and no q/k/v bias
unless ``attention_bias`` is set."""

from __future__ import annotations

from typing import Any

from sglite_runtime.models.llama import AttentionFlags, LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    @classmethod
    def attention_flags(cls, config: Any) -> AttentionFlags:
        bias = bool(getattr(config, "attention_bias", False))
        return AttentionFlags(qkv_bias=bias, o_bias=bias, qk_norm=True)
