"""Mixtral (``MixtralForCausalLM``): the Mistral decoder whose feed-forward is a top-k routed,
always renormalized mixture of SwiGLU experts. Checkpoints name the block ``block_sparse_moe``
and the expert projections ``w1`` (gate), ``w3`` (up), ``w2`` (down)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sglite_runtime.layers.linear import ReplicatedLinear
from sglite_runtime.layers.moe import FusedMoE, expert_checkpoint_name, required_expert_shards, select_experts
from sglite_runtime.models.llama import LlamaDecoderLayer
from sglite_runtime.models.mistral import MistralForCausalLM


class MixtralSparseBlock(nn.Module):
    def __init__(self, config: Any, dtype: torch.dtype):
        super().__init__()
        self.top_k = config.num_experts_per_tok
        self.gate = ReplicatedLinear(config.hidden_size, config.num_local_experts, bias=False, params_dtype=dtype)
        act = getattr(config, "hidden_act", None) or "silu"
        self.experts = FusedMoE(config.num_local_experts, config.hidden_size, config.intermediate_size, dtype, act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = select_experts(self.gate(x), self.top_k, renormalize=True, fp32_weights=True)
        return self.experts(x, weights, ids)


class MixtralDecoderLayer(LlamaDecoderLayer):
    def make_mlp(self, config: Any, layer_id: int, dtype: torch.dtype) -> nn.Module:
        return MixtralSparseBlock(config, dtype)


class MixtralForCausalLM(MistralForCausalLM):
    decoder_layer_cls = MixtralDecoderLayer
    supports_cuda_graph = False  # the expert loop syncs with the host

    def map_checkpoint_name(self, name: str) -> tuple[str, Any] | None:
        """``block_sparse_moe`` is sglite's ``mlp``; experts go to the fused expert params."""
        if ".block_sparse_moe." not in name:
            return None
        name = name.replace(".block_sparse_moe.", ".mlp.")
        return expert_checkpoint_name(name) or (name, None)

    def required_shards(self) -> dict[str, set]:
        return required_expert_shards(self)
