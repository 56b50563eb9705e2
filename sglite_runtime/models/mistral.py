"""Mistral: architecturally Llama (no biases), every layer sliding-window when
``sliding_window`` is set."""

from __future__ import annotations

from typing import Any

from sglite_runtime.models.llama import AttentionFlags, LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    @classmethod
    def attention_flags(cls, config: Any) -> AttentionFlags:
        return AttentionFlags()
