"""Random paged-KV fixtures shared by the kernel tests and ``benchmarks/kernel_errors.py``.

Slots are handed out page by page from a shuffled list of pages (page 0 stays the dummy page),
so a request's slots are contiguous inside a page but its pages are scattered across the pool.
That is exactly what the paged allocator produces, and it catches kernels that assume
contiguous slots or page-aligned lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedKV:
    """A filled KV pool plus the table that maps each request's positions to slots."""

    k_buffer: torch.Tensor  # [num_slots, KVH, D]
    v_buffer: torch.Tensor
    req_to_token: torch.Tensor  # int32 [rows, max_ctx]
    req_pool_indices: torch.Tensor  # int64 [bs]
    seq_lens: torch.Tensor  # int64 [bs]


def make_paged_kv(
    seq_lens: list[int],
    kv_heads: int,
    head_dim: int,
    page_size: int,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    generator: torch.Generator | None = None,
    spare_rows: int = 3,
) -> PagedKV:
    """Random K/V for ``len(seq_lens)`` requests laid out in shuffled pages of ``page_size``.

    Request ``i`` lives in a non-trivial row of ``req_to_token`` (rows are permuted and padded
    with ``spare_rows`` unused rows) to catch kernels that confuse batch index and row index.
    """
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    pages_per_req = [-(-s // page_size) for s in seq_lens]
    num_pages = sum(pages_per_req) + 1 + 2  # + dummy page 0 + a couple never touched
    num_slots = num_pages * page_size
    # Pages 1.. in random order; page 0 is reserved like in the real allocator.
    order = (torch.randperm(num_pages - 1, generator=g) + 1).tolist()

    bs = len(seq_lens)
    rows = bs + spare_rows
    max_ctx = max(max(seq_lens, default=1), 1) + 8
    req_to_token = torch.zeros((rows, max_ctx), dtype=torch.int32)
    row_ids = torch.randperm(rows, generator=g)[:bs]
    cursor = 0
    offs = torch.arange(page_size)
    for i, s in enumerate(seq_lens):
        pages = torch.tensor(order[cursor : cursor + pages_per_req[i]], dtype=torch.int64)
        cursor += pages_per_req[i]
        slots = (pages[:, None] * page_size + offs[None, :]).reshape(-1)[:s]
        req_to_token[row_ids[i], :s] = slots.to(torch.int32)

    k = torch.randn((num_slots, kv_heads, head_dim), generator=g).to(dtype)
    v = torch.randn((num_slots, kv_heads, head_dim), generator=g).to(dtype)
    return PagedKV(
        k_buffer=k.to(device),
        v_buffer=v.to(device),
        req_to_token=req_to_token.to(device),
        req_pool_indices=row_ids.to(torch.int64).to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int64, device=device),
    )
