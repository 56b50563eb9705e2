"""Attention backend on FlashInfer's paged prefill/decode wrappers (CUDA only, optional).

The pool buffers ``[slots, kvh, d]`` are viewed as FlashInfer pages of size one,
``[slots, 1, kvh, d]``, so a request's page list is just its ``req_to_token`` row and every
``last_page_len`` is 1; the allocator's real page size does not matter here.

Per forward, ``init_forward_metadata`` builds ``qo_indptr``/``kv_indptr``/``kv_indices``. The
wrapper's ``plan()`` needs the head counts and scale, which only the layer knows, so it runs
lazily on the first layer call and is reused by every later layer with the same shape. Each
layer stores its K/V first, then runs: the paged pass reads the prefix and the new tokens from
the pool, with FlashInfer's causal mask aligned bottom-right (query ``i`` of ``qo_len`` sits at
key position ``kv_len - qo_len + i``).

Importing this module never fails; constructing the backend without flashinfer raises an
``ImportError`` that says how to get it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sglite_runtime.attention.base import AttentionBackend

if TYPE_CHECKING:
    from sglite_runtime.layers.radix_attention import RadixAttention
    from sglite_runtime.model_executor.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)

try:  # optional dependency: `pip install sglite[gpu]`
    import flashinfer
except Exception:  # ImportError, or a broken CUDA install raising something else
    flashinfer = None

WORKSPACE_BYTES = 128 * 1024 * 1024


def flashinfer_available() -> bool:
    """True when flashinfer imported and CUDA is usable."""
    return flashinfer is not None and torch.cuda.is_available()


@dataclass
class FlashInferMetadata:
    qo_indptr: torch.Tensor | None  # int32 [bs + 1], EXTEND only
    kv_indptr: torch.Tensor  # int32 [bs + 1]
    kv_indices: torch.Tensor  # int32 [sum(seq_lens)]: slots = page ids of size-1 pages
    kv_last_page_len: torch.Tensor  # int32 [bs], all ones
    planned_key: tuple | None = None  # (heads, kv_heads, head_dim, scale, q dtype, kv dtype)


class FlashInferAttnBackend(AttentionBackend):
    """FlashInfer paged attention over the KV pool (page-size-1 view)."""

    def __init__(self, device: str | torch.device = "cuda"):
        if flashinfer is None:
            raise ImportError(
                "The flashinfer attention backend needs the `flashinfer` package: "
                "install it with `pip install sglite[gpu]` (flashinfer-python), "
                "or choose --attention-backend triton / torch_native."
            )
        self.device = torch.device(device)
        self.workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=self.device)
        self.prefill_wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")
        # Decode wrappers differ by use_tensor_cores (worth it from a GQA group of 4); built lazily.
        self._decode_wrappers: dict[bool, Any] = {}

    # ---- metadata -----------------------------------------------------------------------
    def init_forward_metadata(self, forward_batch: "ForwardBatch") -> None:
        fb = forward_batch
        dev = fb.seq_lens.device
        bs = fb.batch_size
        seq_lens = fb.seq_lens.to(torch.int32)
        kv_indptr = torch.zeros(bs + 1, dtype=torch.int32, device=dev)
        kv_indptr[1:] = torch.cumsum(seq_lens, 0)
        # The slots of each request's first seq_len positions, concatenated.
        max_len = max(fb.seq_lens_cpu) if fb.seq_lens_cpu else 0
        rows = fb.req_to_token_pool.req_to_token[fb.req_pool_indices, :max_len]
        valid = torch.arange(max_len, device=dev)[None, :] < seq_lens[:, None]
        kv_indices = rows[valid].to(torch.int32)
        qo_indptr = None
        if fb.forward_mode.is_extend():
            qo_indptr = torch.zeros(bs + 1, dtype=torch.int32, device=dev)
            assert fb.extend_seq_lens is not None  # set for every extend batch
            qo_indptr[1:] = torch.cumsum(fb.extend_seq_lens.to(torch.int32), 0)
        fb.attn_metadata = FlashInferMetadata(
            qo_indptr=qo_indptr,
            kv_indptr=kv_indptr,
            kv_indices=kv_indices,
            kv_last_page_len=torch.ones(bs, dtype=torch.int32, device=dev),
        )

    def _decode_wrapper(self, use_tensor_cores: bool) -> Any:
        w = self._decode_wrappers.get(use_tensor_cores)
        if w is None:
            w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(self.workspace, "NHD", use_tensor_cores=use_tensor_cores)
            self._decode_wrappers[use_tensor_cores] = w
        return w

    @staticmethod
    def _store_kv(q, k, v, layer: "RadixAttention", fb: "ForwardBatch") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Write the new tokens' K/V into the pool (FlashInfer reads every key from it) and
        return q as ``[n, heads, d]`` and the pool viewed as ``[slots, page=1, kvh, d]``."""
        n = q.shape[0]
        fb.token_to_kv_pool.set_kv_buffer(
            layer.layer_id, fb.out_cache_loc,
            k.reshape(n, layer.tp_k_head_num, layer.head_dim), v.reshape(n, layer.tp_v_head_num, layer.head_dim))
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        return q.reshape(n, layer.tp_q_head_num, layer.head_dim), k_buf.unsqueeze(1), v_buf.unsqueeze(1)

    # ---- forward ------------------------------------------------------------------------
    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True) -> torch.Tensor:
        fb = forward_batch
        if not save_kv_cache:
            raise NotImplementedError("flashinfer backend reads new tokens from the pool; save_kv_cache=False unsupported")
        if not isinstance(fb.attn_metadata, FlashInferMetadata):
            self.init_forward_metadata(fb)
        md: FlashInferMetadata = fb.attn_metadata
        n = q.shape[0]
        q3, k_cache, v_cache = self._store_kv(q, k, v, layer, fb)
        key = ("extend", layer.tp_q_head_num, layer.tp_k_head_num, layer.head_dim, layer.scaling, q.dtype, k_cache.dtype)
        if md.planned_key != key:
            self.prefill_wrapper.plan(
                md.qo_indptr, md.kv_indptr, md.kv_indices, md.kv_last_page_len,
                layer.tp_q_head_num, layer.tp_k_head_num, layer.head_dim, 1,
                causal=True, sm_scale=layer.scaling, q_data_type=q.dtype, kv_data_type=k_cache.dtype,
            )  # fmt: skip
            md.planned_key = key
        o = self.prefill_wrapper.run(q3.contiguous(), (k_cache, v_cache))
        return o.view(n, -1)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True) -> torch.Tensor:
        fb = forward_batch
        if not save_kv_cache:
            raise NotImplementedError("flashinfer backend reads new tokens from the pool; save_kv_cache=False unsupported")
        if not isinstance(fb.attn_metadata, FlashInferMetadata):
            self.init_forward_metadata(fb)
        md: FlashInferMetadata = fb.attn_metadata
        bs = q.shape[0]
        q3, k_cache, v_cache = self._store_kv(q, k, v, layer, fb)
        use_tc = layer.tp_q_head_num // layer.tp_k_head_num >= 4
        wrapper = self._decode_wrapper(use_tc)
        key = ("decode", layer.tp_q_head_num, layer.tp_k_head_num, layer.head_dim, layer.scaling, q.dtype, k_cache.dtype)
        if md.planned_key != key:
            wrapper.plan(
                md.kv_indptr, md.kv_indices, md.kv_last_page_len,
                layer.tp_q_head_num, layer.tp_k_head_num, layer.head_dim, 1,
                pos_encoding_mode="NONE", sm_scale=layer.scaling, q_data_type=q.dtype, kv_data_type=k_cache.dtype,
            )  # fmt: skip
            md.planned_key = key
        o = wrapper.run(q3.contiguous(), (k_cache, v_cache))
        return o.view(bs, -1)
