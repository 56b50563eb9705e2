"""The attention layer: a thin handle that forwards to the batch's attention backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from sglite_runtime.model_executor.forward_batch import ForwardBatch


class RadixAttention(nn.Module):
    """Attention over the paged KV pool. Head counts are per TP rank.

    ``sliding_window`` (HF semantics): the query at position ``i`` sees keys ``j`` with
    ``i - window < j <= i``; None means full causal attention. The pool keeps every token,
    so the window is only a mask: a cached prefix longer than the window stays exact.
    """

    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        scaling: float,
        num_kv_heads: int,
        layer_id: int,
        sliding_window: int | None = None,
    ):
        super().__init__()
        self.sliding_window = sliding_window if sliding_window and sliding_window > 0 else None
        self.tp_q_head_num = num_heads
        self.tp_k_head_num = num_kv_heads
        self.tp_v_head_num = num_kv_heads
        self.head_dim = head_dim
        self.scaling = scaling
        self.layer_id = layer_id

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, forward_batch: "ForwardBatch") -> torch.Tensor:
        return forward_batch.attn_backend.forward(q, k, v, self, forward_batch)
