"""ForwardBatch: the tensors one model forward needs, built by the scheduler from a ScheduleBatch.

Tokens of all requests are flattened into one dimension. For EXTEND, request ``i`` contributes
``extend_seq_lens[i]`` new tokens at positions ``extend_prefix_lens[i] .. seq_lens[i]-1``; its
first ``extend_prefix_lens[i]`` tokens are already in the KV pool (``req_to_token`` row
``req_pool_indices[i]``). For DECODE, each request contributes exactly one token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sglite_runtime.attention.base import AttentionBackend
    from sglite_runtime.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool


class ForwardMode(IntEnum):
    EXTEND = 1
    DECODE = 2

    def is_extend(self) -> bool:
        return self == ForwardMode.EXTEND

    def is_decode(self) -> bool:
        return self == ForwardMode.DECODE


@dataclass
class ForwardBatch:
    forward_mode: ForwardMode
    batch_size: int
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    out_cache_loc: torch.Tensor  # [num_tokens] int64: the KV slot each token is written to
    req_pool_indices: torch.Tensor  # [bs] int64: row in req_to_token
    seq_lens: torch.Tensor  # [bs] int64: length after this forward (prefix + new tokens)
    seq_lens_cpu: list[int]
    req_to_token_pool: "ReqToTokenPool"
    token_to_kv_pool: "MHATokenToKVPool"
    attn_backend: "AttentionBackend"
    # EXTEND only
    extend_prefix_lens: torch.Tensor | None = None  # [bs]
    extend_seq_lens: torch.Tensor | None = None  # [bs]
    extend_start_loc: torch.Tensor | None = None  # [bs] offset of each request's first new token
    extend_prefix_lens_cpu: list[int] | None = None
    extend_seq_lens_cpu: list[int] | None = None
    # Backend-owned metadata set by attn_backend.init_forward_metadata().
    attn_metadata: Any = field(default=None, repr=False)
    # token_seq_lens() memo (longrope/dynamic RoPE), computed once per forward.
    _token_seq_lens: torch.Tensor | None = field(default=None, repr=False)

    def token_seq_lens(self) -> torch.Tensor:
        """``[num_tokens]``: the length (after this forward) of the request each token is in."""
        if self._token_seq_lens is None:
            if self.forward_mode.is_decode():
                self._token_seq_lens = self.seq_lens
            else:
                ext = self.extend_seq_lens
                if ext is None:
                    ext = torch.tensor(self.extend_seq_lens_cpu, dtype=torch.int64, device=self.seq_lens.device)
                self._token_seq_lens = torch.repeat_interleave(self.seq_lens, ext, output_size=self.num_tokens)
        return self._token_seq_lens

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])
