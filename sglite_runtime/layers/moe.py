"""Mixture-of-experts feed-forward: a top-k softmax router and SwiGLU experts, in plain torch.

``FusedMoE`` keeps every expert's gate/up weights in one ``w13 [E, 2*I, H]`` tensor and the
down weights in ``w2 [E, H, I]`` (``I`` split across TP ranks, outputs all-reduced), filled
from per-expert checkpoint tensors (``experts.{e}.gate_proj/up_proj/down_proj.weight``).

The forward loops over the experts that received tokens, as HF's reference does: exact and
cheap on the CPU, correct on a GPU. It syncs with the host (which experts were hit), so MoE
models set ``supports_cuda_graph = False``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglite_runtime.distributed import get_tp_rank, get_tp_size, tensor_model_parallel_all_reduce
from sglite_runtime.layers.activation import gated_activation


def select_experts(
    router_logits: torch.Tensor, top_k: int, renormalize: bool, fp32_weights: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights [T, k], expert ids [T, k])``: softmax in fp32, top-k, optionally renormalized
    to sum to 1. Weights are cast to the logits' dtype (HF ``Qwen3MoeTopKRouter``) unless
    ``fp32_weights`` (HF ``MixtralTopKRouter`` keeps them in fp32)."""
    probs = torch.softmax(router_logits, dim=-1, dtype=torch.float32)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return (weights if fp32_weights else weights.to(router_logits.dtype)), ids


class FusedMoE(nn.Module):
    """``num_experts`` SwiGLU experts of width ``intermediate_size``; ``forward(x, weights, ids)``."""

    def __init__(
        self, num_experts: int, hidden_size: int, intermediate_size: int, dtype: torch.dtype, act: str = "silu"
    ):
        super().__init__()
        tp = get_tp_size()
        if intermediate_size % tp:
            raise ValueError(f"moe_intermediate_size={intermediate_size} is not divisible by tp_size={tp}")
        self.num_experts = num_experts
        self.tp_rank = get_tp_rank()
        self.inter = intermediate_size // tp  # per rank
        self.w13_weight = nn.Parameter(torch.empty(num_experts, 2 * self.inter, hidden_size, dtype=dtype),
                                       requires_grad=False)
        self.w2_weight = nn.Parameter(torch.empty(num_experts, hidden_size, self.inter, dtype=dtype),
                                      requires_grad=False)
        self.w13_weight.weight_loader = self._load_w13  # type: ignore[attr-defined]  # loader hook on the Parameter
        self.w2_weight.weight_loader = self._load_w2  # type: ignore[attr-defined]  # loader hook on the Parameter
        self.act_fn = gated_activation(act)

    def _load_w13(self, param: nn.Parameter, loaded: torch.Tensor, shard: tuple[int, int]) -> None:
        expert, which = shard  # which: 0 gate, 1 up
        src = loaded.narrow(0, self.tp_rank * self.inter, self.inter)
        param.data[expert, which * self.inter : (which + 1) * self.inter].copy_(src)

    def _load_w2(self, param: nn.Parameter, loaded: torch.Tensor, shard: tuple[int, int]) -> None:
        expert, _ = shard
        param.data[expert].copy_(loaded.narrow(1, self.tp_rank * self.inter, self.inter))

    def forward(self, x: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(x)
        hit = torch.unique(topk_ids).tolist()
        for e in hit:
            token_idx, slot = torch.where(topk_ids == e)
            h = self.act_fn(F.linear(x[token_idx], self.w13_weight[e]))
            # In fp32 when the router weights are (Mixtral), as HF multiplies before casting back.
            h = F.linear(h, self.w2_weight[e]) * topk_weights[token_idx, slot, None]
            out.index_add_(0, token_idx, h.to(out.dtype))
        return tensor_model_parallel_all_reduce(out)


def expert_checkpoint_name(name: str) -> tuple[str, tuple[int, int]] | None:
    """Map ``...experts.{e}.{gate,up,down}_proj.weight`` (Mixtral: ``w1``, ``w3``, ``w2``) to
    ``(param name, (e, piece))``."""
    parts = name.split(".")
    if len(parts) < 4 or parts[-1] != "weight" or "experts" not in parts:
        return None
    i = parts.index("experts")
    if len(parts) != i + 4 or not parts[i + 1].isdigit():
        return None
    expert, proj = int(parts[i + 1]), parts[i + 2]
    prefix = ".".join(parts[: i + 1])
    if proj in ("gate_proj", "w1"):
        return f"{prefix}.w13_weight", (expert, 0)
    if proj in ("up_proj", "w3"):
        return f"{prefix}.w13_weight", (expert, 1)
    if proj in ("down_proj", "w2"):
        return f"{prefix}.w2_weight", (expert, 0)
    return None


def required_expert_shards(model: nn.Module) -> dict[str, set]:
    """For the loader: every expert's gate and up piece of each ``w13``, its down piece of ``w2``."""
    shards: dict[str, set] = {}
    for pname, module in model.named_modules():
        if isinstance(module, FusedMoE):
            n = module.num_experts
            shards[f"{pname}.w13_weight"] = {(e, j) for e in range(n) for j in (0, 1)}
            shards[f"{pname}.w2_weight"] = {(e, 0) for e in range(n)}
    return shards
