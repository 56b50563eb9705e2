"""Qwen2: the Llama decoder with a bias on q/k/v (not on o_proj)."""

from __future__ import annotations

from typing import Any

from sglite_runtime.models.llama import AttentionFlags, LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    @classmethod
    def attention_flags(cls, config: Any) -> AttentionFlags:
        return AttentionFlags(qkv_bias=True, o_bias=False, qk_norm=False)
