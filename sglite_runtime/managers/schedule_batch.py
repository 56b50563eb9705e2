"""Req (one request's state machine) and ScheduleBatch (the requests of one forward).

Lifecycle of a Req: waiting → (grammar queue) → extend (possibly in chunks) → decode steps →
finished. A retracted request goes back to waiting with its outputs kept and re-prefills
``input + output``. KV ownership invariants (see radix_cache.py):

* while running, ``req_to_token[req_pool_idx, :kv_len]`` holds the request's KV, where
  ``kv_len = len(origin_input_ids) + len(output_ids) - 1``: the last sampled token has no KV yet;
* ``prefix_indices`` is the part the radix tree owns (locked through ``last_node``); the rest of
  the row is the request's own and is freed (or inserted) by ``cache_finished_req``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from sglite_runtime.model_executor.forward_batch import ForwardMode

if TYPE_CHECKING:
    from sglite_runtime.managers.io_struct import FinishAbort, FinishReason
    from sglite_runtime.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPoolAllocator
    from sglite_runtime.mem_cache.radix_cache import RadixCache
    from sglite_runtime.sampling.sampling_params import SamplingParams

logger = logging.getLogger(__name__)


class Req:
    """The scheduler-side state of one generate request."""

    def __init__(
        self,
        rid: str,
        origin_input_text: str | None,
        origin_input_ids: list[int],
        sampling_params: "SamplingParams",
        seed: int,
        return_logprob: bool = False,
        logprob_start_len: int = -1,
        top_logprobs_num: int = 0,
        stream: bool = False,
        eos_token_ids: set[int] | None = None,
    ):
        self.rid = rid
        self.origin_input_text = origin_input_text
        self.origin_input_ids = origin_input_ids
        self.sampling_params = sampling_params
        self.seed = seed
        self.return_logprob = return_logprob
        self.logprob_start_len = logprob_start_len
        self.top_logprobs_num = top_logprobs_num
        self.stream = stream
        self.eos_token_ids = eos_token_ids or set()

        self.output_ids: list[int] = []
        self.fill_ids: list[int] = []
        # KV state
        self.req_pool_idx: int | None = None
        self.prefix_indices: torch.Tensor = torch.empty(0, dtype=torch.int64)
        self.last_node: Any = None
        self.extend_input_len = 0
        self.is_chunked = False  # the current extend covers only part of fill_ids
        # A running request carried by a prefill (--enable-mixed-chunk): its row already holds
        # the KV of fill_ids[:-1], which is its extend prefix; the radix tree is not involved.
        self.decode_in_extend = False
        self.cached_tokens = 0  # prompt tokens served from the radix cache (first admission)
        self._cached_counted = False
        # Finish state
        self.finished_reason: FinishReason | None = None
        self.to_abort = False
        self.to_abort_message = ""
        # Set when handling this request raised: its finish reason (an abort with status 500).
        self.error_reason: FinishAbort | None = None
        self.finish_sent = False  # the finish message went out (never send it twice)
        # Constrained generation
        self.grammar: Any = None
        self.grammar_key: tuple | None = None
        # Logprob accumulators; the scheduler sends deltas and clears them.
        self.input_token_logprobs: list[tuple[float | None, int]] | None = None
        self.input_top_logprobs: list | None = None
        self.input_logprobs_sent = False
        self.output_token_logprobs: list[tuple[float, int]] = []
        self.output_top_logprobs: list[list[tuple[float, int]]] = []
        self.sent_len = 0  # output tokens already sent to the detokenizer

    # ---- derived lengths ---------------------------------------------------------------
    @property
    def seqlen(self) -> int:
        return len(self.origin_input_ids) + len(self.output_ids)

    def finished(self) -> bool:
        return self.finished_reason is not None

    def wants_input_logprobs(self) -> bool:
        return self.return_logprob and self.logprob_start_len >= 0 and not self.input_logprobs_sent

    def init_next_round_input(self, tree_cache: "RadixCache | None") -> None:
        """Set ``fill_ids`` and match the longest cached prefix (leaving ≥1 token to compute)."""
        self.fill_ids = self.origin_input_ids + self.output_ids
        if tree_cache is None:
            return
        max_prefix_len = len(self.fill_ids) - 1
        if self.wants_input_logprobs():
            # Logits are needed from position start-1 on, so those tokens must be computed.
            max_prefix_len = min(max_prefix_len, max(self.logprob_start_len - 1, 0))
        max_prefix_len = max(max_prefix_len, 0)
        self.prefix_indices, self.last_node = tree_cache.match_prefix(self.fill_ids[:max_prefix_len])
        self.extend_input_len = len(self.fill_ids) - len(self.prefix_indices)

    def reset_for_retract(self) -> None:
        self.prefix_indices = torch.empty(0, dtype=torch.int64)
        self.last_node = None
        self.req_pool_idx = None
        self.extend_input_len = 0
        self.is_chunked = False

    def __repr__(self) -> str:
        return f"Req(rid={self.rid}, input={len(self.origin_input_ids)}, output={len(self.output_ids)})"


class ScheduleBatch:
    """A set of requests run together in one forward, plus the tensors that forward needs."""

    def __init__(
        self,
        reqs: list[Req],
        req_to_token_pool: "ReqToTokenPool",
        token_to_kv_pool_allocator: "TokenToKVPoolAllocator",
        tree_cache: "RadixCache",
        device: str = "cpu",
    ):
        self.reqs = reqs
        self.req_to_token_pool = req_to_token_pool
        self.allocator = token_to_kv_pool_allocator
        self.tree_cache = tree_cache
        self.device = device
        self.forward_mode = ForwardMode.EXTEND
        self.sampling_info: Any = None
        # Tensors of the current forward
        self.input_ids: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None
        self.out_cache_loc: torch.Tensor | None = None
        self.req_pool_indices: torch.Tensor | None = None
        self.seq_lens: torch.Tensor | None = None
        self.seq_lens_cpu: list[int] = []
        self.prefix_lens_cpu: list[int] = []
        self.extend_lens_cpu: list[int] = []
        # The last sampled token of each request (the next decode input), kept on device.
        self.output_ids: torch.Tensor | None = None
        # KV slots each request's row holds right now (set as prepare_* allocates), so a batch
        # that fails half-way can be released exactly.
        self.kv_lens: list[int] = []

    def batch_size(self) -> int:
        return len(self.reqs)

    def is_empty(self) -> bool:
        return not self.reqs

    # ---- allocation ----------------------------------------------------------------------
    def _ensure_free(self, need: int) -> bool:
        """Evict from the radix cache until ``need`` slots are free; whether that worked."""
        if self.allocator.available_size() < need:
            self.tree_cache.evict(need - self.allocator.available_size())
        return self.allocator.available_size() >= need

    def _alloc_req_slots(self) -> None:
        missing = [r for r in self.reqs if r.req_pool_idx is None]
        if not missing:
            return
        slots = self.req_to_token_pool.alloc(len(missing))
        if slots is None:
            raise RuntimeError("out of request slots; admission should have prevented this")
        for r, s in zip(missing, slots):
            r.req_pool_idx = s

    def _last_locs(self, lens: list[int]) -> list[int]:
        if self.allocator.page_size == 1:
            return [-1] * len(lens)
        table = self.req_to_token_pool.req_to_token
        return [int(table[r.req_pool_idx, n - 1]) if n > 0 else -1 for r, n in zip(self.reqs, lens)]

    # ---- extend ----------------------------------------------------------------------------
    def prepare_for_extend(self) -> None:
        """Allocate slots for the new tokens and build the flattened extend inputs."""
        self.forward_mode = ForwardMode.EXTEND
        self._alloc_req_slots()
        prefix_lens = [len(r.fill_ids) - 1 if r.decode_in_extend else len(r.prefix_indices) for r in self.reqs]
        seq_lens = [len(r.fill_ids) for r in self.reqs]
        extend_lens = [s - p for p, s in zip(prefix_lens, seq_lens)]
        table = self.req_to_token_pool.req_to_token
        for r, p in zip(self.reqs, prefix_lens):
            if p and not r.decode_in_extend:
                table[r.req_pool_idx, :p] = r.prefix_indices.to(table.dtype)
        self.kv_lens = list(prefix_lens)
        self._ensure_free(sum(extend_lens) + len(self.reqs) * (self.allocator.page_size - 1))
        out_cache_loc = self.allocator.alloc_extend(prefix_lens, seq_lens, self._last_locs(prefix_lens))
        if out_cache_loc is None:
            raise RuntimeError("out of KV slots in extend; admission should have prevented this")
        ids: list[int] = []
        pos: list[int] = []
        start = 0
        for r, p, s, n in zip(self.reqs, prefix_lens, seq_lens, extend_lens):
            table[r.req_pool_idx, p:s] = out_cache_loc[start : start + n].to(table.dtype)
            ids.extend(r.fill_ids[p:s])
            pos.extend(range(p, s))
            start += n
        self.kv_lens = list(seq_lens)
        dev = self.device
        self.input_ids = torch.tensor(ids, dtype=torch.int64, device=dev)
        self.positions = torch.tensor(pos, dtype=torch.int64, device=dev)
        self.out_cache_loc = out_cache_loc.to(dev)
        self.req_pool_indices = torch.tensor([r.req_pool_idx for r in self.reqs], dtype=torch.int64, device=dev)
        self.seq_lens = torch.tensor(seq_lens, dtype=torch.int64, device=dev)
        self.seq_lens_cpu, self.prefix_lens_cpu, self.extend_lens_cpu = seq_lens, prefix_lens, extend_lens

    # ---- decode ----------------------------------------------------------------------------
    def _decode_need(self, seq_lens: list[int]) -> int:
        """KV slots the next decode step of these requests needs (a new page per request whose
        last page is full, when paging)."""
        ps = self.allocator.page_size
        return len(seq_lens) if ps == 1 else sum(ps for s in seq_lens if s % ps == 0)

    def check_decode_mem(self) -> bool:
        return self._ensure_free(self._decode_need(self.seq_lens_cpu))

    def prepare_for_decode(self) -> None:
        """One new token per request: the last sampled one, at position seq_len - 1."""
        self.forward_mode = ForwardMode.DECODE
        self.kv_lens = list(self.seq_lens_cpu)
        self.input_ids = self.output_ids
        assert self.seq_lens is not None  # set by the prefill this batch ran
        self.seq_lens = self.seq_lens + 1
        self.seq_lens_cpu = [s + 1 for s in self.seq_lens_cpu]
        self.positions = self.seq_lens - 1
        if self.allocator.page_size == 1:
            loc = self.allocator.alloc(len(self.reqs))
        else:
            loc = self.allocator.alloc_decode(self.seq_lens_cpu, self._last_locs([s - 1 for s in self.seq_lens_cpu]))
        if loc is None:
            raise RuntimeError("out of KV slots in decode; check_decode_mem should have retracted")
        self.out_cache_loc = loc.to(self.device)
        table = self.req_to_token_pool.req_to_token
        table[self.req_pool_indices, self.positions] = self.out_cache_loc.to(table.dtype)
        self.kv_lens = list(self.seq_lens_cpu)

    # ---- batch surgery ---------------------------------------------------------------------
    def filter_batch(self, keep: list[int]) -> None:
        if len(keep) == len(self.reqs):
            return
        self.reqs = [self.reqs[i] for i in keep]
        if self.kv_lens:
            self.kv_lens = [self.kv_lens[i] for i in keep]
        idx = torch.tensor(keep, dtype=torch.int64, device=self.device)
        # A batch that ran has its tensors.
        assert self.req_pool_indices is not None and self.seq_lens is not None and self.output_ids is not None
        self.req_pool_indices = self.req_pool_indices[idx]
        self.seq_lens = self.seq_lens[idx]
        self.seq_lens_cpu = [self.seq_lens_cpu[i] for i in keep]
        self.output_ids = self.output_ids[idx]
        if self.sampling_info is not None:
            self.sampling_info.filter(keep)

    def merge_batch(self, other: "ScheduleBatch") -> None:
        if self.sampling_info is not None and other.sampling_info is not None:
            self.sampling_info.merge(other.sampling_info)
        elif other.sampling_info is not None:
            self.sampling_info = other.sampling_info
        self.reqs = self.reqs + other.reqs
        self.kv_lens = []  # set again by the next prepare_for_decode
        if self.req_pool_indices is None:
            self.req_pool_indices, self.seq_lens, self.output_ids = (
                other.req_pool_indices, other.seq_lens, other.output_ids)
            self.seq_lens_cpu = list(other.seq_lens_cpu)
            return
        # Both batches ran, so both have their tensors.
        assert self.seq_lens is not None and self.output_ids is not None
        assert other.req_pool_indices is not None and other.seq_lens is not None and other.output_ids is not None
        self.req_pool_indices = torch.cat([self.req_pool_indices, other.req_pool_indices])
        self.seq_lens = torch.cat([self.seq_lens, other.seq_lens])
        self.seq_lens_cpu = self.seq_lens_cpu + other.seq_lens_cpu
        self.output_ids = torch.cat([self.output_ids, other.output_ids])

    def retract_decode(self) -> list[Req]:
        """Free running requests until the next decode step fits; return them for requeueing.

        Requests with few outputs and long inputs go first (they lose the least work). The
        last request is never retracted, so the batch always makes progress.
        """
        order = sorted(range(len(self.reqs)), key=lambda i: (len(self.reqs[i].output_ids), -len(self.reqs[i].origin_input_ids)), reverse=True)
        from sglite_runtime.mem_cache.kv_release import release_req_kv

        retracted: list[int] = []
        while len(order) > 1 and not self._fits_after(retracted):
            i = order.pop()
            r = self.reqs[i]
            # Outputs (and so the grammar state) are kept: the request re-prefills them later.
            release_req_kv(self.tree_cache, r, r.seqlen - 1, cache=False)
            retracted.append(i)
        keep = sorted(order)
        out = [self.reqs[i] for i in sorted(retracted)]
        self.filter_batch(keep)
        return out

    def _fits_after(self, retracted: list[int]) -> bool:
        gone = set(retracted)
        return self._ensure_free(self._decode_need([s for i, s in enumerate(self.seq_lens_cpu) if i not in gone]))
