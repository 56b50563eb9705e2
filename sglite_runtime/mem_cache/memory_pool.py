"""KV memory: the request → token table, the slot allocator and the per-layer KV buffers.

Three objects, as in SGLang:

* ``ReqToTokenPool``: an int32 table ``[max_running_requests, max_context_len]``; the row of a
  running request maps each of its positions to the KV slot that holds it.
* ``TokenToKVPoolAllocator``: hands out KV slots. Allocation is by page; with ``page_size=1`` a
  page is one token. Slot 0 (page 0) is never handed out: padded rows write there.
* ``MHATokenToKVPool``: per-layer K and V buffers ``[num_slots + page_size, kv_heads, head_dim]``.

Kernels always see per-token slots (``req_to_token``), so paging only changes allocation.
"""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class ReqToTokenPool:
    """Rows of position → KV slot, one per running request."""

    def __init__(self, size: int, max_context_len: int, device: str | torch.device = "cpu"):
        self.size = size
        self.max_context_len = max_context_len
        self.device = device
        self.req_to_token = torch.zeros((size, max_context_len), dtype=torch.int32, device=device)
        self.free_slots: list[int] = list(range(size))
        self.reserved: set[int] = set()  # rows taken for good (the CUDA-graph padding row)

    def available_size(self) -> int:
        return len(self.free_slots)

    def alloc(self, n: int = 1) -> list[int] | None:
        if n > len(self.free_slots):
            return None
        out, self.free_slots = self.free_slots[:n], self.free_slots[n:]
        return out

    def free(self, idx: int | list[int]) -> None:
        if isinstance(idx, int):
            self.free_slots.append(idx)
        else:
            self.free_slots.extend(idx)

    def reserve(self) -> int | None:
        """Take a row out of circulation for good: ``clear`` never frees it."""
        got = self.alloc(1)
        if got is not None:
            self.reserved.add(got[0])
        return got[0] if got else None

    def usable_size(self) -> int:
        return self.size - len(self.reserved)

    def clear(self) -> None:
        self.free_slots = [i for i in range(self.size) if i not in self.reserved]


class TokenToKVPoolAllocator:
    """Free-slot allocator over ``size`` usable token slots, handed out page by page.

    Slots are numbered so that slot ``s`` lives in page ``s // page_size``. Page 0 is the dummy
    page; the usable slots are ``page_size .. page_size + size - 1``.
    """

    def __init__(self, size: int, page_size: int = 1, device: str | torch.device = "cpu"):
        if size % page_size:
            size -= size % page_size
        self.size = size
        self.page_size = page_size
        self.num_pages = size // page_size
        self.device = device
        self.clear()

    # ---- accounting ---------------------------------------------------------------------
    def clear(self) -> None:
        # Pages 1..num_pages are free; page 0 is the dummy page.
        self.free_pages = torch.arange(1, self.num_pages + 1, dtype=torch.int64, device=self.device)

    def available_size(self) -> int:
        return int(self.free_pages.numel()) * self.page_size

    # ---- page size 1 fast path and page-granular alloc -------------------------------------
    def alloc(self, need_size: int) -> torch.Tensor | None:
        """``need_size`` token slots. With page_size > 1 ``need_size`` must be whole pages."""
        if self.page_size == 1:
            if need_size > self.free_pages.numel():
                return None
            out = self.free_pages[:need_size]
            self.free_pages = self.free_pages[need_size:]
            return out
        assert need_size % self.page_size == 0, "paged alloc takes whole pages"
        pages = self._alloc_pages(need_size // self.page_size)
        if pages is None:
            return None
        return self._pages_to_slots(pages)

    def _alloc_pages(self, n: int) -> torch.Tensor | None:
        if n > self.free_pages.numel():
            return None
        out = self.free_pages[:n]
        self.free_pages = self.free_pages[n:]
        return out

    def _pages_to_slots(self, pages: torch.Tensor) -> torch.Tensor:
        offs = torch.arange(self.page_size, dtype=torch.int64, device=self.device)
        return (pages[:, None] * self.page_size + offs[None, :]).reshape(-1)

    def alloc_extend(self, prefix_lens: list[int], seq_lens: list[int], last_locs: list[int]) -> torch.Tensor | None:
        """Slots for the tokens ``prefix_len .. seq_len`` of each request, concatenated.

        A request first fills the rest of the page holding its last slot (``last_locs``, -1
        when it has none), then takes new pages.
        """
        if self.page_size == 1:
            return self.alloc(sum(s - p for p, s in zip(prefix_lens, seq_lens)))
        ps = self.page_size
        pages_needed = [(-(-s // ps)) - (-(-p // ps)) for p, s in zip(prefix_lens, seq_lens)]
        pages = self._alloc_pages(sum(pages_needed))
        if pages is None:
            return None
        out, cursor = [], 0
        for p, s, last, n in zip(prefix_lens, seq_lens, last_locs, pages_needed):
            head = min(s, -(-p // ps) * ps) - p  # slots left in the current partial page
            if head > 0:
                out.append(torch.arange(last + 1, last + 1 + head, dtype=torch.int64, device=self.device))
            if n:
                slots = self._pages_to_slots(pages[cursor : cursor + n])
                out.append(slots[: s - p - max(head, 0)])
                cursor += n
        return torch.cat(out) if out else torch.empty(0, dtype=torch.int64, device=self.device)

    def alloc_decode(self, seq_lens: list[int], last_locs: list[int]) -> torch.Tensor | None:
        """One slot per request for the token at position ``seq_len - 1``."""
        if self.page_size == 1:
            return self.alloc(len(seq_lens))
        return self.alloc_extend([s - 1 for s in seq_lens], seq_lens, last_locs)

    def free(self, free_index: torch.Tensor) -> None:
        """Return slots. With paging, a page is freed when any of its slots is given back;
        callers always free whole pages or a request's whole unaligned tail."""
        if free_index.numel() == 0:
            return
        if self.page_size == 1:
            self.free_pages = torch.cat((self.free_pages, free_index.to(torch.int64)))
        else:
            pages = torch.unique(free_index.to(torch.int64) // self.page_size)
            self.free_pages = torch.cat((self.free_pages, pages))


class MHATokenToKVPool:
    """Per-layer K/V buffers. Row ``s`` holds the KV of slot ``s``; rows of page 0 are scratch."""

    def __init__(
        self,
        size: int,
        page_size: int,
        dtype: torch.dtype,
        head_num: int,
        head_dim: int,
        layer_num: int,
        device: str | torch.device = "cpu",
    ):
        self.size = size
        self.page_size = page_size
        self.dtype = dtype
        self.head_num = head_num
        self.head_dim = head_dim
        self.layer_num = layer_num
        self.device = device
        rows = size + page_size
        self.k_buffer = [torch.zeros((rows, head_num, head_dim), dtype=dtype, device=device) for _ in range(layer_num)]
        self.v_buffer = [torch.zeros((rows, head_num, head_dim), dtype=dtype, device=device) for _ in range(layer_num)]

    def get_kv_buffer(self, layer_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k_buffer[layer_id], self.v_buffer[layer_id]

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor) -> None:
        if cache_k.dtype != self.dtype:
            cache_k, cache_v = cache_k.to(self.dtype), cache_v.to(self.dtype)
        self.k_buffer[layer_id][loc] = cache_k
        self.v_buffer[layer_id][loc] = cache_v


def kv_bytes_per_token(layer_num: int, kv_heads: int, head_dim: int, dtype: torch.dtype) -> int:
    return 2 * layer_num * kv_heads * head_dim * dtype.itemsize
