"""The attention-backend interface that every model layer calls through ``RadixAttention``.

A backend stores the new tokens' K/V at ``forward_batch.out_cache_loc`` and attends over the
request's whole sequence read from the paged pool (``req_to_token``). Shapes:

* ``q``: ``[num_tokens, num_heads * head_dim]``
* ``k``, ``v``: ``[num_tokens, num_kv_heads * head_dim]``
* returns ``[num_tokens, num_heads * head_dim]``

EXTEND uses a bottom-right aligned causal mask: new token ``j`` of a request with prefix ``p``
sees keys ``0 .. p + j``. DECODE attends over all ``seq_len`` keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sglite_runtime.layers.radix_attention import RadixAttention
    from sglite_runtime.model_executor.forward_batch import ForwardBatch


class AttentionBackend:
    """Base class. Subclasses implement ``forward_extend`` and ``forward_decode``."""

    def init_forward_metadata(self, forward_batch: "ForwardBatch") -> None:
        """Called once per forward, before the layers run (plan kernels, build indices)."""

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: "RadixAttention",
        forward_batch: "ForwardBatch",
        save_kv_cache: bool = True,
    ) -> torch.Tensor:
        if forward_batch.forward_mode.is_decode():
            return self.forward_decode(q, k, v, layer, forward_batch, save_kv_cache)
        return self.forward_extend(q, k, v, layer, forward_batch, save_kv_cache)

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True) -> torch.Tensor:
        raise NotImplementedError

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True) -> torch.Tensor:
        raise NotImplementedError
