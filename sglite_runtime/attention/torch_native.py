"""The reference attention backend: plain PyTorch SDPA.

Correctness first: this is the CPU/CI path and the oracle the Triton and FlashInfer backends
are tested against. For each request it gathers the whole sequence's K/V from the paged pool
through ``req_to_token`` and runs ``scaled_dot_product_attention``.

Extend uses a bottom-right aligned causal mask (new token ``j`` of a request with prefix
``p`` sees keys ``0 .. p + j``): SDPA's ``is_causal`` when there is no prefix, else an
explicit ``[extend, seq_len]`` mask (SDPA's ``is_causal`` is top-left aligned). Decode runs the
whole batch in one padded, masked SDPA call. A layer's ``sliding_window`` narrows both masks to
the last ``window`` keys of each query.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from sglite_runtime.attention.base import AttentionBackend

if TYPE_CHECKING:
    from sglite_runtime.layers.radix_attention import RadixAttention
    from sglite_runtime.model_executor.forward_batch import ForwardBatch


# Decode batches are split into at most this many length groups of at least DECODE_GROUP_MIN.
DECODE_GROUPS = 4
DECODE_GROUP_MIN = 8


class TorchNativeAttnBackend(AttentionBackend):
    """SDPA per request over K/V read back from ``token_to_kv_pool``."""

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float, causal: bool,
              mask: torch.Tensor | None = None) -> torch.Tensor:
        """``q [Lq, H, D]``, ``k/v [Lk, Hkv, D]`` → ``[Lq, H, D]``; GQA maps head h to h // (H/Hkv)."""
        out = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0),
            k.transpose(0, 1).unsqueeze(0),
            v.transpose(0, 1).unsqueeze(0),
            attn_mask=mask,
            is_causal=causal,
            scale=scaling,
            enable_gqa=q.shape[1] != k.shape[1],
        )
        return out.squeeze(0).transpose(0, 1)

    def _kv_of(self, layer: "RadixAttention", fb: "ForwardBatch", i: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        slots = fb.req_to_token_pool.req_to_token[fb.req_pool_indices[i], :length].to(torch.int64)
        return k_buf[slots], v_buf[slots]

    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True) -> torch.Tensor:
        fb = forward_batch
        num_tokens = q.shape[0]
        q = q.view(num_tokens, layer.tp_q_head_num, layer.head_dim)
        k = k.view(num_tokens, layer.tp_k_head_num, layer.head_dim)
        v = v.view(num_tokens, layer.tp_v_head_num, layer.head_dim)
        if save_kv_cache:
            fb.token_to_kv_pool.set_kv_buffer(layer.layer_id, fb.out_cache_loc, k, v)
        prefix_lens = fb.extend_prefix_lens_cpu
        extend_lens = fb.extend_seq_lens_cpu
        if prefix_lens is None or extend_lens is None:
            prefix_lens = fb.extend_prefix_lens.tolist()
            extend_lens = fb.extend_seq_lens.tolist()
        out = torch.empty_like(q)
        start = 0
        for i, (p, e) in enumerate(zip(prefix_lens, extend_lens)):
            if e == 0:
                continue
            seq_len = p + e
            if save_kv_cache:
                ks, vs = self._kv_of(layer, fb, i, seq_len)
            else:
                # Nothing was stored: the prefix comes from the pool, the new part from k/v.
                kp, vp = self._kv_of(layer, fb, i, p)
                ks = torch.cat((kp.to(k.dtype), k[start : start + e]))
                vs = torch.cat((vp.to(v.dtype), v[start : start + e]))
            qs = q[start : start + e]
            window = layer.sliding_window
            if p == 0 and (window is None or window >= e):
                o = self._sdpa(qs, ks.to(q.dtype), vs.to(q.dtype), layer.scaling, causal=True)
            else:
                # Bottom-right causal: new token j (position p + j) sees keys 0 .. p + j. An
                # explicit [e, seq_len] mask costs e·seq_len, not seq_len² as padding would.
                dist = (p + torch.arange(e, device=q.device))[:, None] - torch.arange(seq_len, device=q.device)[None, :]
                mask = dist >= 0 if window is None else (dist >= 0) & (dist < window)
                o = self._sdpa(qs, ks.to(q.dtype), vs.to(q.dtype), layer.scaling, causal=False, mask=mask)
            out[start : start + e] = o
            start += e
        return out.view(num_tokens, -1)

    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True) -> torch.Tensor:
        fb = forward_batch
        bs = q.shape[0]
        q = q.view(bs, layer.tp_q_head_num, layer.head_dim)
        k = k.view(bs, layer.tp_k_head_num, layer.head_dim)
        v = v.view(bs, layer.tp_v_head_num, layer.head_dim)
        if save_kv_cache:
            fb.token_to_kv_pool.set_kv_buffer(layer.layer_id, fb.out_cache_loc, k, v)
        if not save_kv_cache:
            return self._decode_per_request(q, k, v, layer, fb)
        k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        k2, v2 = k_buf.view(k_buf.shape[0], -1), v_buf.view(v_buf.shape[0], -1)
        groups = fb.attn_metadata if isinstance(fb.attn_metadata, list) else self._decode_groups(fb)
        out = q.new_empty(q.shape) if len(groups) > 1 else None
        for rows, max_len, slots, valid in groups:
            n = valid.shape[0]
            shape = (n, max_len, k_buf.shape[1], k_buf.shape[2])
            # index_select on a 2-D view is several times faster on CPU than advanced indexing.
            ks = k2.index_select(0, slots).view(shape).to(q.dtype).transpose(1, 2)
            vs = v2.index_select(0, slots).view(shape).to(q.dtype).transpose(1, 2)
            qg = q if rows is None else q.index_select(0, rows)
            if layer.sliding_window is not None:
                seq = fb.seq_lens if rows is None else fb.seq_lens.index_select(0, rows)
                first = (seq - layer.sliding_window)[:, None]  # oldest key still in the window
                valid = valid & (torch.arange(max_len, device=valid.device)[None, :] >= first)
            o = F.scaled_dot_product_attention(
                qg.unsqueeze(2), ks, vs, attn_mask=valid[:, None, None, :], scale=layer.scaling,
                enable_gqa=q.shape[1] != ks.shape[1]).squeeze(2)
            if out is None:
                return o.reshape(bs, -1)
            out[rows] = o
        assert out is not None  # more than one group
        return out.reshape(bs, -1)

    def init_forward_metadata(self, forward_batch: "ForwardBatch") -> None:
        fb = forward_batch
        fb.attn_metadata = self._decode_groups(fb) if fb.forward_mode.is_decode() else None

    @staticmethod
    def _decode_groups(fb: "ForwardBatch") -> list:
        """Split a decode batch into groups of similar length, each padded to its own longest.

        One padded, masked SDPA per group: a per-request loop costs a Python round trip per
        request per layer, and one group for a batch with mixed lengths pads every request
        to the longest. Slots and masks are built once per forward, not per layer.
        """
        lens = fb.seq_lens_cpu
        bs = len(lens)
        order = sorted(range(bs), key=lens.__getitem__)
        size = max(DECODE_GROUP_MIN, -(-bs // DECODE_GROUPS))
        table = fb.req_to_token_pool.req_to_token
        dev = fb.seq_lens.device
        groups = []
        for start in range(0, bs, size):
            idx = order[start : start + size]
            max_len = lens[idx[-1]]
            rows = None if size >= bs else torch.tensor(idx, dtype=torch.int64, device=dev)
            pool_rows = fb.req_pool_indices if rows is None else fb.req_pool_indices[rows]
            seq = fb.seq_lens if rows is None else fb.seq_lens[rows]
            slots = table[pool_rows, :max_len].reshape(-1).to(torch.int64)
            valid = torch.arange(max_len, device=dev)[None, :] < seq[:, None]
            groups.append((rows, max_len, slots, valid))
        return groups

    def _decode_per_request(self, q, k, v, layer, fb) -> torch.Tensor:
        """Decode without storing: the new token's K/V comes from ``k``/``v``, not the pool."""
        bs = q.shape[0]
        out = torch.empty_like(q)
        for i, seq_len in enumerate(fb.seq_lens_cpu):
            kp, vp = self._kv_of(layer, fb, i, seq_len - 1)
            ks, vs = torch.cat((kp.to(k.dtype), k[i : i + 1])), torch.cat((vp.to(v.dtype), v[i : i + 1]))
            if layer.sliding_window is not None:
                ks, vs = ks[-layer.sliding_window :], vs[-layer.sliding_window :]
            # One query, the last position: it sees every key, so no mask.
            out[i : i + 1] = self._sdpa(q[i : i + 1], ks.to(q.dtype), vs.to(q.dtype), layer.scaling, causal=False)
        return out.view(bs, -1)
