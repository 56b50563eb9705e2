"""``--enable-mixed-chunk``: running decode requests ride along in a prefill's forward.

Without it a step is either a prefill (prefill has priority) or a decode, so every arriving
prompt stalls the running streams for a whole prefill step. With it, each running request
joins the prefill batch as a one-token extend: its KV so far is handed to the radix tree and
becomes its prefix (``cache_unfinished_req``), and its last sampled token is the one new
token. One forward then advances both; the extend path processes every request alike and the
survivors become the running batch. The sampling state is rebuilt from each request's outputs
(``SamplingBatchInfo.from_reqs``), so seeded and greedy outputs equal those of separate steps.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sglite_runtime.managers.schedule_batch import Req, ScheduleBatch
    from sglite_runtime.mem_cache.radix_cache import RadixCache

logger = logging.getLogger(__name__)


def mix_running_into_prefill(prefill: "ScheduleBatch", running: "ScheduleBatch | None",
                             tree_cache: "RadixCache") -> bool:
    """Add ``running``'s requests to ``prefill`` (before ``prepare_for_extend``) when they fit.

    Returns whether they were added; the caller then drops its running batch. Not mixed: no
    running requests, a request that still wants prompt logprobs (its extend would compute
    them again), or a pool that cannot hold the prefill plus one token per running request.
    """
    if running is None or running.is_empty():
        return False
    if any(r.wants_input_logprobs() for r in running.reqs):
        return False
    page = prefill.allocator.page_size
    need = (sum(len(r.fill_ids) - len(r.prefix_indices) for r in prefill.reqs)
            + (len(prefill.reqs) + len(running.reqs)) * page)
    if not prefill._ensure_free(need):
        return False
    for r in running.reqs:
        _as_one_token_extend(r, tree_cache)
    prefill.reqs = prefill.reqs + running.reqs
    return True


def _as_one_token_extend(r: "Req", tree_cache: "RadixCache") -> None:
    # Every token but the last sampled one has KV: hand it to the tree, which makes it the
    # request's prefix (tree part + its own unaligned tail) and moves the lock.
    r.fill_ids = r.origin_input_ids + r.output_ids[:-1]
    tree_cache.cache_unfinished_req(r)
    r.fill_ids = r.origin_input_ids + r.output_ids
    r.extend_input_len = 1
    r.is_chunked = False
