"""Which waiting requests to admit next, within memory and token budgets.

* ``SchedulePolicy`` orders the waiting queue: longest cached prefix first (LPM) while the
  queue is short, arrival order (FCFS) otherwise, since matching every request each step costs
  more than it saves on long queues.
* ``PrefillAdder`` admits requests into one extend batch. It charges each admitted request its
  new tokens plus an estimate of the decode tokens it will still need (``new_token_ratio`` of
  its remaining budget), and the running requests' estimates too, against the free plus
  evictable KV. Requests that do not fit wait; the scheduler retracts if the estimate was low.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sglite_runtime.managers.schedule_batch import Req
    from sglite_runtime.mem_cache.radix_cache import RadixCache

# Per-request cap on the decode tokens an estimate may charge (SGLang uses the same bound).
CLIP_MAX_NEW_TOKENS_ESTIMATION = 4096
LPM_MAX_QUEUE = 128


class SchedulePolicy:
    def __init__(self, policy: str, tree_cache: "RadixCache", radix_enabled: bool):
        self.policy = policy if radix_enabled else "fcfs"
        self.tree_cache = tree_cache

    def calc_priority(self, waiting_queue: list["Req"]) -> None:
        """Match prefixes and sort in place. Every waiting request ends with fill_ids set."""
        for r in waiting_queue:
            r.init_next_round_input(self.tree_cache)
        if self.policy == "lpm" and len(waiting_queue) <= LPM_MAX_QUEUE:
            waiting_queue.sort(key=lambda r: -len(r.prefix_indices))


class AddReqResult(Enum):
    CONTINUE = auto()  # admitted, keep going
    NO_TOKEN = auto()  # out of KV budget: stop admitting
    OTHER = auto()  # out of this step's token budget: stop admitting


class PrefillAdder:
    def __init__(
        self,
        tree_cache: "RadixCache",
        available_tokens: int,
        running_reqs: list["Req"],
        new_token_ratio: float,
        max_prefill_tokens: int,
        chunk_size: int | None,
        page_size: int = 1,
    ):
        self.tree_cache = tree_cache
        self.new_token_ratio = new_token_ratio
        self.page_size = page_size
        reserved = sum(self._decode_estimate(r) for r in running_reqs)
        self.rem_total_tokens = available_tokens + tree_cache.evictable_size() - reserved
        self.rem_input_tokens = max_prefill_tokens
        self.rem_chunk_tokens = chunk_size if chunk_size else None
        self.can_run_list: list["Req"] = []
        self.nothing_running = not running_reqs
        self.new_chunked_req: "Req | None" = None

    def _decode_estimate(self, r: "Req") -> int:
        assert r.sampling_params.max_new_tokens is not None  # request validation fills it in
        left = r.sampling_params.max_new_tokens - len(r.output_ids)
        return int(min(max(left, 0), CLIP_MAX_NEW_TOKENS_ESTIMATION) * self.new_token_ratio)

    def _charge(self, extend: int, decode_estimate: int) -> None:
        self.rem_total_tokens -= extend + decode_estimate + self.page_size - 1
        self.rem_input_tokens -= extend
        if self.rem_chunk_tokens is not None:
            self.rem_chunk_tokens -= extend

    def add_chunked_req(self, req: "Req") -> "Req | None":
        """Continue a request whose prefill was split. Returns it again if still unfinished."""
        extend = len(req.fill_ids) - len(req.prefix_indices)
        if self.rem_chunk_tokens is not None and extend > self.rem_chunk_tokens:
            self._truncate(req, self.rem_chunk_tokens)
            extend = req.extend_input_len
            self._charge(extend, 0)
            self.can_run_list.append(req)
            return req
        req.is_chunked = False
        self._charge(extend, self._decode_estimate(req))
        self.can_run_list.append(req)
        return None

    def _truncate(self, req: "Req", budget: int) -> None:
        budget = max(budget - budget % self.page_size, self.page_size)
        req.fill_ids = req.fill_ids[: len(req.prefix_indices) + budget]
        req.extend_input_len = budget
        req.is_chunked = True

    def add_one_req(self, req: "Req") -> AddReqResult:
        extend = req.extend_input_len
        estimate = self._decode_estimate(req)
        if extend + self.page_size > self.rem_total_tokens:
            return AddReqResult.NO_TOKEN
        # With nothing else admitted or running, admit on the prompt alone: otherwise a
        # request whose decode estimate exceeds the pool would wait forever. Retraction
        # covers a low estimate.
        alone = self.nothing_running and not self.can_run_list
        if not alone and extend + estimate + self.page_size - 1 >= self.rem_total_tokens:
            return AddReqResult.NO_TOKEN
        if extend > self.rem_input_tokens and self.can_run_list:
            return AddReqResult.OTHER
        # Locking turns the matched prefix from evictable into protected, which shrinks the
        # budget computed above, so charge that and check again.
        before = self.tree_cache.evictable_size()
        self.tree_cache.inc_lock_ref(req.last_node)
        locked = before - self.tree_cache.evictable_size()
        if not alone and extend + estimate + self.page_size - 1 >= self.rem_total_tokens - locked:
            self.tree_cache.dec_lock_ref(req.last_node)
            return AddReqResult.NO_TOKEN
        self.rem_total_tokens -= locked
        if self.rem_chunk_tokens is not None and extend > self.rem_chunk_tokens:
            if self.rem_chunk_tokens < self.page_size:
                self.tree_cache.dec_lock_ref(req.last_node)
                return AddReqResult.OTHER
            self._truncate(req, self.rem_chunk_tokens)
            self._charge(req.extend_input_len, 0)
            self.can_run_list.append(req)
            self.new_chunked_req = req
            return AddReqResult.OTHER
        self._charge(extend, estimate)
        self.can_run_list.append(req)
        if self.rem_input_tokens <= 0 or (self.rem_chunk_tokens is not None and self.rem_chunk_tokens <= 0):
            return AddReqResult.OTHER
        return AddReqResult.CONTINUE
