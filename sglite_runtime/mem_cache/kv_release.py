"""The one place a request hands its KV back: finish, abort, retract, jump-forward, failure.

Every path that ends a request's hold on the KV pool calls ``release_req_kv``, so the pool is
whole again when idle by construction rather than by five hand-written copies agreeing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sglite_runtime.managers.schedule_batch import Req
    from sglite_runtime.mem_cache.radix_cache import RadixCache


def release_req_kv(tree_cache: "RadixCache", req: "Req", kv_len: int, *, cache: bool) -> None:
    """Release everything ``req`` holds: its KV slots, its request row and its tree lock.

    Args:
        tree_cache: the radix cache (or the disabled one) the request's prefix came from.
        req: the request; afterwards it holds nothing (``reset_for_retract``) and may be
            re-admitted (retract, jump-forward) or dropped (finish, abort, failure).
        kv_len: how many leading slots of the request's row hold KV right now, i.e. the
            tokens ``(origin_input_ids + output_ids)[:kv_len]`` (``seqlen - 1`` after a decode
            step: the last sampled token has no KV yet; ``len(fill_ids)`` right after a prefill;
            ``seqlen`` when an overlapped step already ran the request once more).
        cache: True hands the computed KV to the radix tree (finish, abort, jump-forward: a
            later request or the re-prefill reuses it); False frees it (retract, failure).
    """
    if req.req_pool_idx is not None:
        if cache:
            ids = (list(req.origin_input_ids) + list(req.output_ids))[:kv_len]
            tree_cache.cache_finished_req(req, token_ids=ids)  # also unlocks req.last_node
        else:
            table = tree_cache.req_to_token_pool.req_to_token
            own = tree_cache.owned_prefix_len(req)
            tree_cache.token_to_kv_pool_allocator.free(table[req.req_pool_idx, own:kv_len].to(torch.int64))
            tree_cache.req_to_token_pool.free(req.req_pool_idx)
            if req.last_node is not None:
                tree_cache.dec_lock_ref(req.last_node)
    elif req.last_node is not None:
        tree_cache.dec_lock_ref(req.last_node)
    req.reset_for_retract()
