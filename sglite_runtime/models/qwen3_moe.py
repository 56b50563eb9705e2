"""Qwen3-MoE (``Qwen3MoeForCausalLM``, e.g. Qwen3-30B-A3B): the Qwen3 decoder (q/k norm) whose
feed-forward is a top-k softmax-routed mixture of SwiGLU experts on the sparse layers
(``decoder_sparse_step``, minus ``mlp_only_layers``), a dense MLP on the others."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sglite_runtime.layers.linear import ReplicatedLinear
from sglite_runtime.layers.moe import FusedMoE, expert_checkpoint_name, required_expert_shards, select_experts
from sglite_runtime.models.llama import LlamaDecoderLayer, LlamaMLP
from sglite_runtime.models.qwen3 import Qwen3ForCausalLM


def num_experts(config: Any) -> int:
    return int(getattr(config, "num_experts", None) or getattr(config, "num_local_experts", 0) or 0)


class Qwen3MoeSparseBlock(nn.Module):
    """Router (``gate``) then experts, named as in the checkpoint."""

    def __init__(self, config: Any, dtype: torch.dtype):
        super().__init__()
        n = num_experts(config)
        self.top_k = config.num_experts_per_tok
        self.renormalize = bool(getattr(config, "norm_topk_prob", False))
        self.gate = ReplicatedLinear(config.hidden_size, n, bias=False, params_dtype=dtype)
        act = getattr(config, "hidden_act", None) or "silu"
        self.experts = FusedMoE(n, config.hidden_size, config.moe_intermediate_size, dtype, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = select_experts(self.gate(x), self.top_k, self.renormalize)
        return self.experts(x, weights, ids)


class Qwen3MoeDecoderLayer(LlamaDecoderLayer):
    def make_mlp(self, config: Any, layer_id: int, dtype: torch.dtype) -> nn.Module:
        step = int(getattr(config, "decoder_sparse_step", 1) or 1)
        sparse = (
            layer_id not in (getattr(config, "mlp_only_layers", None) or [])
            and num_experts(config) > 0
            and (layer_id + 1) % step == 0
        )
        if sparse:
            return Qwen3MoeSparseBlock(config, dtype)
        return LlamaMLP(config.hidden_size, config.intermediate_size, False, dtype, config.hidden_act)


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    decoder_layer_cls = Qwen3MoeDecoderLayer
    # The expert loop asks the host which experts were hit: not capturable in a CUDA graph.
    supports_cuda_graph = False

    def map_checkpoint_name(self, name: str) -> tuple[str, Any] | None:
        """Per-expert checkpoint tensors → the fused expert params (see ``FusedMoE``)."""
        return expert_checkpoint_name(name)

    def required_shards(self) -> dict[str, set]:
        """Every expert's gate and up piece for ``w13``, its down weight for ``w2``."""
        return required_expert_shards(self)
