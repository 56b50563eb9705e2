"""Paged decode attention (flash-decoding) in Triton.

Each request has one query token that attends over the ``seq_len`` keys its ``req_to_token``
row points at. One program per (request, head) would leave most of a GPU idle at small batch
sizes and long contexts, so the key range is cut into ``num_kv_splits`` pieces:

* stage 1, grid ``(bs, H, splits)``: each program walks its piece in ``BLOCK_N`` tiles with an
  online softmax and writes the normalised partial output plus its log-sum-exp to a scratch
  tensor ``attn_logits [bs, H, splits, D + 1]`` (the LSE sits in the last column);
* stage 2, grid ``(bs, H)``: merges the pieces by their LSEs.

K/V are indexed per token through ``req_to_token``, so the kernel works for any page size.
With ``sliding_window > 0`` both stages split only the last ``window`` keys.
GQA: query head ``h`` reads KV head ``h // (H // KVH)``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _decode_stage1(
    Q,
    K_Buf,
    V_Buf,
    Req_to_token,
    Req_pool_indices,
    Seq_lens,
    Mid,
    sm_scale,
    window,
    stride_qb,
    stride_qh,
    stride_kbs,
    stride_kh,
    stride_vbs,
    stride_vh,
    stride_r2t,
    stride_mb,
    stride_mh,
    stride_ms,
    KV_GROUP: tl.constexpr,
    NUM_SPLITS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    split = tl.program_id(2)
    kvh = h // KV_GROUP

    row = tl.load(Req_pool_indices + b).to(tl.int64)
    seq_len = tl.load(Seq_lens + b).to(tl.int32)
    kv_lo = 0
    if window > 0:
        kv_lo = tl.maximum(seq_len - window, 0)
    split_len = tl.cdiv(seq_len - kv_lo, NUM_SPLITS)
    start = kv_lo + split * split_len
    end = tl.minimum(start + split_len, seq_len)

    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q = tl.load(Q + b * stride_qb + h * stride_qh + offs_d, mask=mask_d, other=0.0).to(tl.float32)

    m_i = float("-inf")
    l_i = 0.0
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    # Empty pieces (short sequences) write nothing; stage 2 recomputes the same bounds and skips them.
    if end > start:
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < end
            # int64 slots: slot * stride overflows int32 on large pools.
            slots = tl.load(Req_to_token + row * stride_r2t + offs_n, mask=mask_n, other=0).to(tl.int64)
            kv_mask = mask_n[:, None] & mask_d[None, :]
            k = tl.load(K_Buf + slots[:, None] * stride_kbs + kvh * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
            qk = tl.sum(q[None, :] * k.to(tl.float32), 1) * sm_scale
            qk = tl.where(mask_n, qk, float("-inf"))
            # Every tile holds at least one valid key, so m_new is finite and no NaN arises.
            m_new = tl.maximum(m_i, tl.max(qk, 0))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(qk - m_new)
            v = tl.load(V_Buf + slots[:, None] * stride_vbs + kvh * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
            l_i = l_i * alpha + tl.sum(p, 0)
            m_i = m_new
        base = Mid + b * stride_mb + h * stride_mh + split * stride_ms
        tl.store(base + offs_d, acc / l_i, mask=mask_d)
        tl.store(base + HEAD_DIM, m_i + tl.log(l_i))


@triton.jit
def _decode_stage2(
    Mid,
    O,
    Seq_lens,
    window,
    stride_mb,
    stride_mh,
    stride_ms,
    stride_ob,
    stride_oh,
    NUM_SPLITS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    seq_len = tl.load(Seq_lens + b).to(tl.int32)
    kv_lo = 0
    if window > 0:
        kv_lo = tl.maximum(seq_len - window, 0)
    split_len = tl.cdiv(seq_len - kv_lo, NUM_SPLITS)

    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    m_i = float("-inf")
    l_i = 0.0
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for split in range(NUM_SPLITS):
        start = kv_lo + split * split_len
        end = tl.minimum(start + split_len, seq_len)
        if end > start:
            base = Mid + b * stride_mb + h * stride_mh + split * stride_ms
            part = tl.load(base + offs_d, mask=mask_d, other=0.0)
            lse = tl.load(base + HEAD_DIM)
            m_new = tl.maximum(m_i, lse)
            alpha = tl.exp(m_i - m_new)
            w = tl.exp(lse - m_new)
            acc = acc * alpha + w * part
            l_i = l_i * alpha + w
            m_i = m_new
    tl.store(O + b * stride_ob + h * stride_oh + offs_d, (acc / l_i).to(O.dtype.element_ty), mask=mask_d)


def decode_attention_fwd(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    o: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sm_scale: float,
    num_kv_splits: int = 8,
    attn_logits: torch.Tensor | None = None,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Decode attention over the paged pool; writes ``o [bs, H, D]`` in place and returns it.

    Args:
        q: ``[bs, H, D]`` one query per request.
        k_buffer, v_buffer: ``[slots, KVH, D]`` the layer's pool buffers.
        req_to_token: int32 ``[rows, max_ctx]``; ``req_pool_indices [bs]`` picks each request's row.
        seq_lens: ``[bs]`` keys per request (including the token being decoded, already stored).
        num_kv_splits: pieces the key range is cut into (stage-1 parallelism).
        attn_logits: optional fp32 scratch ``[bs, H, num_kv_splits, D + 1]``; pass a preallocated
            one to keep allocations out of CUDA-graph replays.
        sliding_window: attend only to the last ``sliding_window`` keys (None: all of them).
    """
    bs, num_heads, head_dim = q.shape
    kv_heads = k_buffer.shape[1]
    assert num_heads % kv_heads == 0, f"{num_heads} query heads not a multiple of {kv_heads} kv heads"
    assert q.stride(-1) == 1 and k_buffer.stride(-1) == 1 and v_buffer.stride(-1) == 1 and o.stride(-1) == 1
    if bs == 0:
        return o
    if attn_logits is None:
        attn_logits = torch.empty((bs, num_heads, num_kv_splits, head_dim + 1), dtype=torch.float32, device=q.device)
    block_d = triton.next_power_of_2(head_dim)
    # Smaller tiles on the CPU interpreter keep each simulated program cheap.
    block_n = 64 if q.is_cuda else 32

    _decode_stage1[(bs, num_heads, num_kv_splits)](
        q, k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens, attn_logits, sm_scale,
        int(sliding_window or 0), q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        req_to_token.stride(0), attn_logits.stride(0), attn_logits.stride(1), attn_logits.stride(2),
        KV_GROUP=num_heads // kv_heads, NUM_SPLITS=num_kv_splits, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_N=block_n,
    )  # fmt: skip
    _decode_stage2[(bs, num_heads)](
        attn_logits, o, seq_lens, int(sliding_window or 0),
        attn_logits.stride(0), attn_logits.stride(1), attn_logits.stride(2), o.stride(0), o.stride(1),
        NUM_SPLITS=num_kv_splits, HEAD_DIM=head_dim, BLOCK_D=block_d,
    )  # fmt: skip
    return o
