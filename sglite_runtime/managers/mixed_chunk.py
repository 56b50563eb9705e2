"""``--enable-mixed-chunk``: running decode requests ride along in a prefill's forward.

Without it a step is either a prefill (prefill has priority) or a decode, so every arriving
prompt stalls the running streams for a whole prefill step. With it, each running request
joins the prefill batch as a one-token extend (``Req.decode_in_extend``): the KV its row
holds is its prefix as it stands (the radix tree is not involved), and its last sampled token
is the one new token. One forward then advances both; the extend path processes every request alike and the
survivors become the running batch. The sampling state is rebuilt from each request's outputs
(``SamplingBatchInfo.from_reqs``), so seeded and greedy outputs equal those of separate steps.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sglite_runtime.managers.schedule_batch import Req, ScheduleBatch

logger = logging.getLogger(__name__)


def mix_running_into_prefill(prefill: "ScheduleBatch", running: "ScheduleBatch | None") -> bool:
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
        _as_one_token_extend(r)
    prefill.reqs = prefill.reqs + running.reqs
    return True


def _as_one_token_extend(r: "Req") -> None:
    # Every token but the last sampled one has KV in the request's row already.
    r.fill_ids = r.origin_input_ids + r.output_ids
    r.extend_input_len = 1
    r.is_chunked = False
    r.decode_in_extend = True
