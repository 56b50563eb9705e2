"""Phi-3 / Phi-3.5 / Phi-4-mini (``Phi3ForCausalLM``): the Llama decoder with checkpoints that
store ``qkv_proj`` and ``gate_up_proj`` already fused, an optional sliding window on every layer
(Phi-3-mini-4k), ``longrope`` scaling (the 128k variants) and partial rotary (Phi-4-mini)."""

from __future__ import annotations

from typing import Any

from sglite_runtime.models.llama import AttentionFlags, LlamaForCausalLM


class Phi3ForCausalLM(LlamaForCausalLM):
    # The checkpoint names are the fused modules' own: the fused weight loaders split them.
    stacked_params_mapping: list[tuple[str, str, str | int]] = []

    @classmethod
    def attention_flags(cls, config: Any) -> AttentionFlags:
        return AttentionFlags()
