"""Model class lookup by ``config.architectures[0]``."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sglite_runtime.models.llama import LlamaForCausalLM

# architecture name → "module:ClassName"; imported lazily so one broken model can't break all.
_MODELS: dict[str, str] = {
    "LlamaForCausalLM": "sglite_runtime.models.llama:LlamaForCausalLM",
    "Qwen2ForCausalLM": "sglite_runtime.models.qwen2:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "sglite_runtime.models.qwen3:Qwen3ForCausalLM",
    "MistralForCausalLM": "sglite_runtime.models.mistral:MistralForCausalLM",
    "Gemma3ForCausalLM": "sglite_runtime.models.gemma3:Gemma3ForCausalLM",
    "Phi3ForCausalLM": "sglite_runtime.models.phi3:Phi3ForCausalLM",
    "Qwen3MoeForCausalLM": "sglite_runtime.models.qwen3_moe:Qwen3MoeForCausalLM",
    "MixtralForCausalLM": "sglite_runtime.models.mixtral:MixtralForCausalLM",
}


def supported_architectures() -> list[str]:
    """The ``architectures[0]`` values sglite can serve."""
    return sorted(_MODELS)


def get_model_class(hf_config: Any) -> type[LlamaForCausalLM]:
    """The sglite model class for an HF config; ValueError naming the supported ones otherwise.

    Every family is a LlamaForCausalLM (its forward/compute_logits contract)."""
    archs = getattr(hf_config, "architectures", None) or []
    if not archs:
        raise ValueError(f"config has no 'architectures'; supported: {', '.join(supported_architectures())}")
    target = _MODELS.get(archs[0])
    if target is None:
        raise ValueError(
            f"unsupported architecture {archs[0]!r}; supported: {', '.join(supported_architectures())}"
        )
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)
