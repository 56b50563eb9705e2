"""Paged extend (prefill with a cached prefix) attention in Triton.

Request ``i`` brings ``extend_seq_lens[i]`` new tokens whose K/V sit contiguously in
``k_extend``/``v_extend`` starting at ``extend_start_loc[i]``; its first
``prefix_len = seq_lens[i] - extend_seq_lens[i]`` tokens are already in the paged pool.
Grid ``(bs, H, cdiv(max_extend, BLOCK_M))``: each program owns ``BLOCK_M`` new tokens of one
head and keeps one online softmax across two passes:

1. the prefix, read through ``req_to_token`` in ``BLOCK_N`` tiles (every query sees all of it);
2. the new tokens, read from the contiguous extend tensors under a causal mask aligned
   bottom-right: new token ``j`` sees new tokens ``0 .. j`` (absolute keys ``0 .. prefix + j``).

Reading the new tokens from ``k_extend`` rather than the pool means the kernel does not care
whether the caller stored them before or after the call.

``sliding_window > 0`` (HF semantics) keeps only keys with ``q_pos - k_pos < window``: both
passes start at the first tile any query of the block can see and mask the rest, so a cached
prefix longer than the window costs only the window.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _extend_fwd(
    Q,
    K_ext,
    V_ext,
    O,
    K_Buf,
    V_Buf,
    Req_to_token,
    Req_pool_indices,
    Seq_lens,
    Ext_lens,
    Ext_start,
    sm_scale,
    window,
    stride_qn,
    stride_qh,
    stride_ken,
    stride_keh,
    stride_ven,
    stride_veh,
    stride_on,
    stride_oh,
    stride_kbs,
    stride_kbh,
    stride_vbs,
    stride_vbh,
    stride_r2t,
    KV_GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    mb = tl.program_id(2)
    kvh = h // KV_GROUP

    ext_len = tl.load(Ext_lens + b).to(tl.int32)
    # Blocks past this request's new tokens do nothing (the grid is sized for the longest one).
    if mb * BLOCK_M < ext_len:
        seq_len = tl.load(Seq_lens + b).to(tl.int32)
        prefix_len = seq_len - ext_len
        ext_start = tl.load(Ext_start + b).to(tl.int64)
        row = tl.load(Req_pool_indices + b).to(tl.int64)

        offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < ext_len
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        offs_n0 = tl.arange(0, BLOCK_N)

        q_ptrs = Q + (ext_start + offs_m[:, None]) * stride_qn + h * stride_qh + offs_d[None, :]
        q = tl.load(q_ptrs, mask=mask_m[:, None] & mask_d[None, :], other=0.0)

        m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        # With a window, query m (absolute position prefix_len + m) sees keys > its position - window.
        use_window = window > 0
        lo1 = 0
        lo2 = 0
        if use_window:
            lo1 = tl.maximum(prefix_len + mb * BLOCK_M - window + 1, 0)
            lo2 = tl.maximum(mb * BLOCK_M - window + 1, 0)

        # Pass 1: the cached prefix through the page table. No causal mask: it precedes every query.
        for n0 in range(lo1, prefix_len, BLOCK_N):
            offs_n = n0 + offs_n0
            mask_n = offs_n < prefix_len
            if use_window:
                in_win = (prefix_len + offs_m[:, None] - offs_n[None, :]) < window
            else:
                in_win = offs_m[:, None] >= 0
            slots = tl.load(Req_to_token + row * stride_r2t + offs_n, mask=mask_n, other=0).to(tl.int64)
            kv_mask = mask_n[:, None] & mask_d[None, :]
            k = tl.load(K_Buf + slots[:, None] * stride_kbs + kvh * stride_kbh + offs_d[None, :], mask=kv_mask, other=0.0)
            # "ieee": fp32 inputs must not silently drop to tf32 on tensor cores (ignored for bf16).
            qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision="ieee") * sm_scale
            qk = tl.where(mask_n[None, :] & in_win, qk, float("-inf"))
            # A window can hide a whole tile from some rows: m_safe keeps exp() away from -inf - -inf.
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(qk - m_safe[:, None])
            v = tl.load(V_Buf + slots[:, None] * stride_vbs + kvh * stride_vbh + offs_d[None, :], mask=kv_mask, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision="ieee")
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new

        # Pass 2: the new tokens, causal. Keys past this block's last query are never visible.
        end_n = tl.minimum(ext_len, (mb + 1) * BLOCK_M)
        for n0 in range(lo2, end_n, BLOCK_N):
            offs_n = n0 + offs_n0
            mask_n = offs_n < ext_len
            kv_mask = mask_n[:, None] & mask_d[None, :]
            k = tl.load(
                K_ext + (ext_start + offs_n[:, None]) * stride_ken + kvh * stride_keh + offs_d[None, :],
                mask=kv_mask,
                other=0.0,
            )
            qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision="ieee") * sm_scale
            causal = (offs_n[None, :] <= offs_m[:, None]) & mask_n[None, :]
            if use_window:
                causal = causal & ((offs_m[:, None] - offs_n[None, :]) < window)
            qk = tl.where(causal, qk, float("-inf"))
            # Every row sees itself, so l_i > 0 at the end; rows fully masked in a tile get p = 0.
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp(m_i - m_safe)
            p = tl.exp(qk - m_safe[:, None])
            v = tl.load(
                V_ext + (ext_start + offs_n[:, None]) * stride_ven + kvh * stride_veh + offs_d[None, :],
                mask=kv_mask,
                other=0.0,
            )
            acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype), input_precision="ieee")
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new

        # Padding rows past ext_len may see no key under a window (l_i = 0); they are not stored.
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        o_ptrs = O + (ext_start + offs_m[:, None]) * stride_on + h * stride_oh + offs_d[None, :]
        tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def extend_attention_fwd(
    q_extend: torch.Tensor,
    k_extend: torch.Tensor,
    v_extend: torch.Tensor,
    o_extend: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    extend_seq_lens: torch.Tensor,
    extend_start_loc: torch.Tensor,
    sm_scale: float,
    max_extend_len: int | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Extend attention; writes ``o_extend [N, H, D]`` in place and returns it.

    Args:
        q_extend: ``[N, H, D]`` the new tokens of all requests, flattened.
        k_extend, v_extend: ``[N, KVH, D]`` their keys/values.
        k_buffer, v_buffer: ``[slots, KVH, D]`` the layer's pool (holds the prefixes).
        req_to_token: int32 ``[rows, max_ctx]``; ``req_pool_indices [bs]`` picks each row.
        seq_lens: ``[bs]`` prefix + new tokens; ``extend_seq_lens [bs]`` new tokens;
        extend_start_loc: ``[bs]`` first row of each request in the flattened tensors.
        max_extend_len: host-side ``max(extend_seq_lens)``; pass it to avoid a device sync.
        sliding_window: attend only to the last ``sliding_window`` keys of each query (None: all).
    """
    num_tokens, num_heads, head_dim = q_extend.shape
    kv_heads = k_extend.shape[1]
    assert num_heads % kv_heads == 0, f"{num_heads} query heads not a multiple of {kv_heads} kv heads"
    for t in (q_extend, k_extend, v_extend, o_extend, k_buffer, v_buffer):
        assert t.stride(-1) == 1, "the head dimension must be contiguous"
    bs = int(req_pool_indices.shape[0])
    if num_tokens == 0 or bs == 0:
        return o_extend
    if max_extend_len is None:
        max_extend_len = int(extend_seq_lens.max().item())
    block_d = triton.next_power_of_2(head_dim)
    if q_extend.is_cuda:
        # Keep the fp32 register/shared tiles within budget for large heads and fp32 inputs.
        small = block_d > 128 or q_extend.element_size() > 2
        block_m, block_n = (32, 32) if small else (64, 64)
        num_warps = 4 if block_d <= 64 else 8
    else:
        # tl.dot needs dims >= 16; small tiles keep the interpreter quick.
        block_m, block_n, num_warps = 16, 16, 1
    num_stages = 2  # the gathered K/V tiles are large; 3 stages can overflow shared memory

    grid = (bs, num_heads, triton.cdiv(max_extend_len, block_m))
    _extend_fwd[grid](
        q_extend, k_extend, v_extend, o_extend, k_buffer, v_buffer,
        req_to_token, req_pool_indices, seq_lens, extend_seq_lens, extend_start_loc, sm_scale,
        int(sliding_window or 0), q_extend.stride(0), q_extend.stride(1), k_extend.stride(0), k_extend.stride(1),
        v_extend.stride(0), v_extend.stride(1), o_extend.stride(0), o_extend.stride(1),
        k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1), req_to_token.stride(0),
        KV_GROUP=num_heads // kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
        num_warps=num_warps, num_stages=num_stages,
    )  # fmt: skip
    return o_extend
