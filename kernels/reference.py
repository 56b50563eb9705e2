"""Plain-torch references for the Triton kernels in this package.

They take exactly the same arguments as the kernels (including the output tensor, which they
fill in place) so a test can call both on the same inputs. They favour obviousness over speed:
a Python loop over requests, gather the request's K/V through ``req_to_token``, and compute
softmax attention in float32.
"""

from __future__ import annotations

import torch


def _gqa_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sm_scale: float, mask: torch.Tensor | None) -> torch.Tensor:
    """``q [M, H, D]`` over ``k, v [N, KVH, D]``; ``mask [M, N]`` True = attend. Returns fp32 ``[M, H, D]``."""
    group = q.shape[1] // k.shape[1]
    # Repeat each KV head for the query heads that share it (head h uses kv head h // group).
    k = k.float().repeat_interleave(group, dim=1)
    v = v.float().repeat_interleave(group, dim=1)
    scores = torch.einsum("mhd,nhd->hmn", q.float(), k) * sm_scale
    if mask is not None:
        scores = scores.masked_fill(~mask[None], float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.einsum("hmn,nhd->mhd", probs, v)


def decode_attention_ref(
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
    """One query token per request attends over all ``seq_lens[i]`` keys of its row (the last
    ``sliding_window`` of them with a window).

    ``num_kv_splits`` and ``attn_logits`` are accepted for signature parity and ignored.
    """
    del num_kv_splits, attn_logits
    for i in range(q.shape[0]):
        row = int(req_pool_indices[i])
        n = int(seq_lens[i])
        lo = max(0, n - sliding_window) if sliding_window else 0
        slots = req_to_token[row, lo:n].long()
        out = _gqa_attend(q[i : i + 1], k_buffer[slots], v_buffer[slots], sm_scale, None)
        o[i] = out[0].to(o.dtype)
    return o


def extend_attention_ref(
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
    """New tokens attend over the cached prefix plus themselves, causal mask aligned bottom-right
    (and, with ``sliding_window``, only keys with ``q_pos - k_pos < sliding_window``).

    The prefix K/V is read from the paged buffers through ``req_to_token``; the new tokens' K/V
    come from the contiguous ``k_extend``/``v_extend`` (they need not be in the pool yet).
    """
    for i in range(int(req_pool_indices.shape[0])):
        row = int(req_pool_indices[i])
        ext = int(extend_seq_lens[i])
        if ext == 0:
            continue
        prefix = int(seq_lens[i]) - ext
        start = int(extend_start_loc[i])
        slots = req_to_token[row, :prefix].long()
        k = torch.cat((k_buffer[slots].to(k_extend.dtype), k_extend[start : start + ext]))
        v = torch.cat((v_buffer[slots].to(v_extend.dtype), v_extend[start : start + ext]))
        # Query j (absolute position prefix + j) sees keys 0 .. prefix + j.
        qpos = torch.arange(ext, device=q_extend.device)[:, None] + prefix
        kpos = torch.arange(prefix + ext, device=q_extend.device)[None, :]
        mask = (kpos <= qpos) if not sliding_window else (kpos <= qpos) & (qpos - kpos < sliding_window)
        out = _gqa_attend(q_extend[start : start + ext], k, v, sm_scale, mask)
        o_extend[start : start + ext] = out.to(o_extend.dtype)
    return o_extend
