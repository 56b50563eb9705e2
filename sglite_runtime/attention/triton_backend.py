"""Attention backend on the Triton kernels in ``kernels/`` (paged extend and flash-decoding).

Runs natively on CUDA and, very slowly, on the CPU under ``TRITON_INTERPRET=1`` (that is how
the tests prove it). Per forward it only needs a few integers and int tensors, computed once
in ``init_forward_metadata``; everything else the kernels read straight from the
``ForwardBatch`` tensors, which is what makes decode CUDA-graph friendly: capture it against
static ``req_pool_indices``/``seq_lens`` buffers and replays read whatever was copied in.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sglite_runtime.attention.base import AttentionBackend

if TYPE_CHECKING:
    from sglite_runtime.layers.radix_attention import RadixAttention
    from sglite_runtime.model_executor.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)


@dataclass
class TritonAttnMetadata:
    """What the kernels need beyond the ForwardBatch, computed once per forward."""

    # EXTEND: host-side max new tokens (sizes the grid without a device sync).
    max_extend_len: int = 0
    extend_seq_lens: torch.Tensor | None = None
    extend_start_loc: torch.Tensor | None = None


class TritonAttnBackend(AttentionBackend):
    """Stores the new K/V at ``out_cache_loc``, then runs the Triton extend or decode kernel.

    Args:
        num_kv_splits: key-range pieces of the decode kernel's first stage (more → more
            parallelism for small batches with long contexts, more merge work).
    """

    # CudaGraphRunner may capture decode with this backend: metadata is read from the batch's
    # (static) tensors only, with no host sync inside forward_decode.
    supports_cuda_graph = True

    def __init__(self, num_kv_splits: int = 8):
        # Imported here, not at module import, so that importing the backend never loads triton
        # (tests must be able to set TRITON_INTERPRET first).
        from kernels.decode_attention import decode_attention_fwd
        from kernels.extend_attention import extend_attention_fwd

        self._decode = decode_attention_fwd
        self._extend = extend_attention_fwd
        self.num_kv_splits = num_kv_splits

    # ---- metadata -----------------------------------------------------------------------
    def init_forward_metadata(self, forward_batch: "ForwardBatch") -> None:
        fb = forward_batch
        md = TritonAttnMetadata()
        if fb.forward_mode.is_extend():
            device = fb.seq_lens.device
            ext_cpu = fb.extend_seq_lens_cpu
            if fb.extend_seq_lens is not None:
                md.extend_seq_lens = fb.extend_seq_lens
            else:
                md.extend_seq_lens = torch.tensor(ext_cpu, dtype=torch.int64, device=device)
            if fb.extend_start_loc is not None:
                md.extend_start_loc = fb.extend_start_loc
            else:
                md.extend_start_loc = torch.cumsum(md.extend_seq_lens, 0) - md.extend_seq_lens
            md.max_extend_len = max(ext_cpu) if ext_cpu else int(md.extend_seq_lens.max().item())
        fb.attn_metadata = md

    def _metadata(self, fb: "ForwardBatch") -> TritonAttnMetadata:
        if not isinstance(fb.attn_metadata, TritonAttnMetadata):
            self.init_forward_metadata(fb)
        return fb.attn_metadata

    # ---- forward ------------------------------------------------------------------------
    def forward_extend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: "RadixAttention",
        forward_batch: "ForwardBatch",
        save_kv_cache: bool = True,
    ) -> torch.Tensor:
        fb = forward_batch
        md = self._metadata(fb)
        q3 = q.reshape(-1, layer.tp_q_head_num, layer.head_dim)
        k3 = k.reshape(-1, layer.tp_k_head_num, layer.head_dim)
        v3 = v.reshape(-1, layer.tp_v_head_num, layer.head_dim)
        if save_kv_cache:
            fb.token_to_kv_pool.set_kv_buffer(layer.layer_id, fb.out_cache_loc, k3, v3)
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        o = torch.empty(q3.shape, dtype=q3.dtype, device=q3.device)  # contiguous even if q3 is a strided view
        assert md.extend_seq_lens is not None and md.extend_start_loc is not None  # set for extend batches
        # The kernel reads the prefix from the pool and the new tokens from k3/v3, so it is
        # correct whether or not they were just stored.
        self._extend(
            q3, k3, v3, o, k_buf, v_buf,
            fb.req_to_token_pool.req_to_token, fb.req_pool_indices, fb.seq_lens,
            md.extend_seq_lens, md.extend_start_loc, layer.scaling, md.max_extend_len,
            sliding_window=layer.sliding_window,
        )  # fmt: skip
        return o.view(q.shape[0], -1)

    def forward_decode(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        layer: "RadixAttention",
        forward_batch: "ForwardBatch",
        save_kv_cache: bool = True,
    ) -> torch.Tensor:
        fb = forward_batch
        bs = q.shape[0]
        q3 = q.reshape(bs, layer.tp_q_head_num, layer.head_dim)
        k3 = k.reshape(bs, layer.tp_k_head_num, layer.head_dim)
        v3 = v.reshape(bs, layer.tp_v_head_num, layer.head_dim)
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        o = torch.empty(q3.shape, dtype=q3.dtype, device=q3.device)  # contiguous even if q3 is a strided view
        if not save_kv_cache:
            # The new token is not in the pool: run it as a 1-token extend (prefix from the
            # pool, the token itself from k/v). Rare path, so the small extra cost is fine.
            ones = torch.ones(bs, dtype=torch.int64, device=q.device)
            starts = torch.arange(bs, dtype=torch.int64, device=q.device)
            self._extend(
                q3, k3, v3, o, k_buf, v_buf, fb.req_to_token_pool.req_to_token,
                fb.req_pool_indices, fb.seq_lens, ones, starts, layer.scaling, 1,
                sliding_window=layer.sliding_window,
            )  # fmt: skip
            return o.view(bs, -1)
        fb.token_to_kv_pool.set_kv_buffer(layer.layer_id, fb.out_cache_loc, k3, v3)
        self._decode(
            q3, k_buf, v_buf, o, fb.req_to_token_pool.req_to_token,
            fb.req_pool_indices, fb.seq_lens, layer.scaling, self.num_kv_splits,
            sliding_window=layer.sliding_window,
        )  # fmt: skip
        return o.view(bs, -1)
