"""RadixCache: unit tests, a stateful property test of the tree, and a request-lifecycle
property test that checks slot ownership (free / tree / request, never two) after every step."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sglite_runtime.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPoolAllocator
from sglite_runtime.mem_cache.radix_cache import ChunkCache, RadixCache, TreeNode

PAGE_SIZES = [1, 16]


@dataclass
class FakeReq:
    """The fields of ``Req`` the cache reads and writes."""

    origin_input_ids: list[int]
    output_ids: list[int] = field(default_factory=list)
    fill_ids: list[int] = field(default_factory=list)
    prefix_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    last_node: Any = None
    req_pool_idx: int = -1


def make(size: int, page_size: int = 1, disable: bool = False, rows: int = 8, ctx: int = 256):
    r2t = ReqToTokenPool(rows, ctx)
    alloc = TokenToKVPoolAllocator(size, page_size)
    return r2t, alloc, RadixCache(r2t, alloc, page_size=page_size, disable=disable)


def put(cache: RadixCache, alloc: TokenToKVPoolAllocator, key: list[int]) -> torch.Tensor:
    """Insert ``key`` the way a request would: match, allocate the rest, insert."""
    idx, _ = cache.match_prefix(key)
    n = len(key) - len(key) % cache.page_size
    new = alloc.alloc(n - len(idx))
    assert new is not None
    value = torch.cat((idx, new))
    assert cache.insert(key, value) == len(idx)
    return value


# ---- check helpers shared by the property tests -----------------------------------------------
def tree_nodes(cache: RadixCache) -> list[TreeNode]:
    out, stack = [], [cache.root_node]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n.children.values())
    return out


def tree_map(cache: RadixCache) -> dict[tuple[int, ...], int]:
    """prefix (as a tuple) → slot of its last token, for every token the tree holds."""
    out: dict[tuple[int, ...], int] = {}
    stack: list[tuple[TreeNode, tuple[int, ...]]] = [(cache.root_node, ())]
    while stack:
        node, path = stack.pop()
        for i, tok in enumerate(node.key):
            out[path + tuple(node.key[: i + 1])] = int(node.value[i])
        stack.extend((c, path + tuple(node.key)) for c in node.children.values())
    return out


def check_structure(cache: RadixCache) -> None:
    ps = cache.page_size
    assert cache.root_node.lock_ref >= 1
    protected = 0
    for node in tree_nodes(cache):
        if node is not cache.root_node:
            assert len(node.key) > 0 and len(node.key) % ps == 0
            assert node.value.numel() == len(node.key) and node.value.dtype == torch.int64
            assert node.parent is not None and node.parent.children[cache._child_key(node.key)] is node
            # Every node value is a run of whole pages.
            pages = node.value.view(-1, ps)
            assert torch.equal(pages - pages[:, :1], torch.arange(ps).expand_as(pages))
            assert bool((pages[:, 0] % ps == 0).all())
            if node.lock_ref > 0:
                protected += len(node.key)
                assert node.parent.lock_ref > 0  # a lock covers the whole path
    assert cache.protected_size() == protected
    assert cache.evictable_size() + cache.protected_size() == cache.total_size()


def check_ownership(cache: RadixCache, alloc: TokenToKVPoolAllocator, request_slots: list[torch.Tensor] = ()) -> None:
    """Every page is free, in the tree, or held by one request — exactly one of them."""
    ps = alloc.page_size
    values = cache.all_values_flatten()
    assert values.numel() == cache.total_size()
    assert torch.unique(values).numel() == values.numel(), "a slot is owned twice in the tree"
    owners = [torch.unique(values // ps), alloc.free_pages] + [torch.unique(s // ps) for s in request_slots]
    allp = torch.cat(owners)
    assert torch.unique(allp).numel() == allp.numel(), "a page has two owners"
    assert allp.numel() == alloc.num_pages, "a page leaked"
    assert allp.numel() == 0 or int(allp.min()) >= 1  # the dummy page is never handed out


# ---- unit tests -------------------------------------------------------------------------------
def test_insert_match_split():
    _, alloc, cache = make(64)
    v_abc = put(cache, alloc, [1, 2, 3])
    assert cache.insert([1, 2, 4], torch.tensor([50, 51, 52])) == 2  # caller frees 50, 51
    idx, node = cache.match_prefix([1, 2])
    assert idx.tolist() == v_abc[:2].tolist() and node.key == [1, 2]
    assert sorted(c.key[0] for c in node.children.values()) == [3, 4]
    idx, node = cache.match_prefix([1, 2, 4, 9])
    assert idx.tolist() == v_abc[:2].tolist() + [52] and node.key == [4]
    idx, node = cache.match_prefix([7, 1])
    assert idx.numel() == 0 and idx.dtype == torch.int64 and node is cache.root_node
    assert cache.match_prefix([])[1] is cache.root_node
    assert cache.total_size() == 4 and cache.evictable_size() == 4


def test_insert_returns_present_length_without_split():
    _, alloc, cache = make(64)
    v = put(cache, alloc, [1, 2, 3, 4])
    n_nodes = len(tree_nodes(cache))
    assert cache.insert([1, 2, 3, 4], torch.tensor([9, 9, 9, 9])) == 4
    assert cache.insert([1, 2], torch.tensor([9, 9])) == 2
    assert len(tree_nodes(cache)) == n_nodes  # a key ending inside a node doesn't split it
    assert cache.match_prefix([1, 2, 3, 4])[0].tolist() == v.tolist()
    assert cache.insert([], torch.empty(0, dtype=torch.int64)) == 0


def test_match_splits_and_lock_ref_is_copied():
    _, alloc, cache = make(64)
    put(cache, alloc, [1, 2, 3, 4])
    _, deep = cache.match_prefix([1, 2, 3, 4])
    assert cache.inc_lock_ref(deep) == -4
    assert (cache.evictable_size(), cache.protected_size()) == (0, 4)
    _, upper = cache.match_prefix([1, 2])  # splits the locked node
    assert upper.key == [1, 2] and deep.key == [3, 4] and deep.parent is upper
    assert upper.lock_ref == deep.lock_ref == 1
    assert cache.dec_lock_ref(deep) == 4  # the old handle still unlocks the whole path
    assert (cache.evictable_size(), cache.protected_size()) == (4, 0)
    check_structure(cache)


def test_lock_counters_move_only_on_zero_one():
    _, alloc, cache = make(64)
    put(cache, alloc, [1, 2, 3])
    put(cache, alloc, [1, 2, 5, 6])
    _, a = cache.match_prefix([1, 2, 3])
    _, b = cache.match_prefix([1, 2, 5, 6])
    assert cache.inc_lock_ref(a) == -3
    assert cache.inc_lock_ref(b) == -2  # [1, 2] is already protected
    assert cache.inc_lock_ref(a) == 0
    assert (cache.evictable_size(), cache.protected_size()) == (0, 5)
    assert cache.dec_lock_ref(a) == 0
    assert cache.dec_lock_ref(a) == 1
    assert cache.dec_lock_ref(b) == 4
    assert cache.inc_lock_ref(cache.root_node) == 0 and cache.root_node.lock_ref == 1
    with pytest.raises(AssertionError):
        cache.dec_lock_ref(b)


def test_evict_lru_order_and_parent_becomes_leaf():
    _, alloc, cache = make(64)
    va = put(cache, alloc, [1, 1])
    vb = put(cache, alloc, [2, 2])
    put(cache, alloc, [3, 3])
    put(cache, alloc, [3, 3, 4])
    cache.match_prefix([1, 1])  # touch a: b is now the least recently used
    free0 = alloc.available_size()
    assert cache.evict(1) == 2
    assert cache.match_prefix([2, 2])[0].numel() == 0
    assert alloc.available_size() == free0 + 2 and vb[0] in alloc.free_pages
    # Then the leaf [4]; its parent [3,3] then becomes a leaf older than [1,1] and goes next.
    assert cache.evict(1) == 1 and cache.match_prefix([3, 3, 4])[0].numel() == 2
    cache.match_prefix([1, 1])
    assert cache.evict(1) == 2 and cache.match_prefix([3, 3])[0].numel() == 0
    assert cache.match_prefix([1, 1])[0].tolist() == va.tolist()
    assert cache.evict(1) == 2 and va[0] in alloc.free_pages
    assert cache.total_size() == 0 and alloc.available_size() == 64


def test_evict_never_frees_locked_or_internal():
    _, alloc, cache = make(64)
    put(cache, alloc, [1, 2, 3])
    put(cache, alloc, [1, 2, 4])
    _, node = cache.match_prefix([1, 2, 3])
    cache.inc_lock_ref(node)
    assert cache.evict(100) == 1  # only [4]
    assert cache.match_prefix([1, 2, 3])[0].numel() == 3
    assert cache.total_size() == 3 and alloc.available_size() == 61
    cache.dec_lock_ref(node)
    assert cache.evict(100) == 3 and alloc.available_size() == 64
    check_ownership(cache, alloc)


def test_page_size_16_alignment():
    ps = 16
    _, alloc, cache = make(8 * ps, ps)
    key = list(range(40))
    value = alloc.alloc(32)
    assert cache.insert(key, value) == 0
    assert cache.total_size() == 32  # the 8-token tail is not cached
    idx, node = cache.match_prefix(key)
    assert idx.tolist() == value.tolist() and len(node.key) == 32
    other = list(range(20)) + [99] * 20  # diverges inside the second page
    idx, node = cache.match_prefix(other)
    assert idx.tolist() == value[:16].tolist() and node.key == list(range(16))
    assert cache.match_prefix(list(range(15)))[0].numel() == 0
    assert cache.insert(list(range(15)), torch.empty(0, dtype=torch.int64)) == 0
    new = alloc.alloc(16)
    assert cache.insert(other, torch.cat((value[:16], new))) == 16
    assert cache.match_prefix(other)[0].tolist() == value[:16].tolist() + new.tolist()
    check_structure(cache)
    check_ownership(cache, alloc)
    assert cache.evict(10**6) == 48 and alloc.available_size() == 8 * ps


# ---- request hand-over, step by step ------------------------------------------------------------
def run_prefill(cache, r2t, alloc, req, end):
    """Allocate and 'compute' tokens [len(prefix_indices), end) of the request."""
    row = r2t.req_to_token[req.req_pool_idx]
    start = len(req.prefix_indices)
    last = int(row[start - 1]) if start else -1
    slots = alloc.alloc_extend([start], [end], [last])
    row[start:end] = slots.to(torch.int32)
    req.fill_ids = (req.origin_input_ids + req.output_ids)[:end]
    return slots


def admit(cache, r2t, req):
    req.req_pool_idx = r2t.alloc(1)[0]
    idx, node = cache.match_prefix(req.origin_input_ids[:-1])
    cache.inc_lock_ref(node)
    req.prefix_indices, req.last_node = idx, node
    r2t.req_to_token[req.req_pool_idx, : len(idx)] = idx.to(torch.int32)


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_cache_req_sequence_exact_accounting(ps):
    size = 16 * ps
    r2t, alloc, cache = make(size, ps)
    prompt = list(range(100, 100 + 3 * ps + 3))  # 3 pages + 3 tokens
    # Request A: chunked prefill of 2 pages + 1 token, then the rest, then 2 decode steps.
    a = FakeReq(prompt)
    admit(cache, r2t, a)
    run_prefill(cache, r2t, alloc, a, 2 * ps + 1)
    cache.cache_unfinished_req(a)
    al = lambda n: n - n % ps  # noqa: E731
    assert len(a.prefix_indices) == 2 * ps + 1 and cache.total_size() == al(2 * ps + 1)
    assert cache.protected_size() == al(2 * ps + 1)  # locked by A
    run_prefill(cache, r2t, alloc, a, len(prompt))
    a.output_ids.append(7)
    cache.cache_unfinished_req(a)
    assert cache.total_size() == al(len(prompt))
    # Request B with the same prompt arrives while A decodes: it shares the cached pages.
    p = len(prompt)
    b = FakeReq(list(prompt))
    admit(cache, r2t, b)
    assert len(b.prefix_indices) == al(p - 1)
    run_prefill(cache, r2t, alloc, b, p)
    b.output_ids.append(8)
    # A decodes one more token (the KV of position p) and finishes with kv length p + 1.
    row = r2t.req_to_token[a.req_pool_idx]
    row[p] = int(alloc.alloc_decode([p + 1], [int(row[p - 1])])[0])
    a.output_ids.append(9)
    cache.cache_finished_req(a)
    assert cache.total_size() == al(p + 1)  # A's unaligned tail was freed
    assert cache.protected_size() == len(b.prefix_indices)
    # B owns exactly one page: its unaligned partial page (ps=16) or its last slot (ps=1).
    assert alloc.available_size() + cache.total_size() + ps == size
    check_ownership(cache, alloc, [r2t.req_to_token[b.req_pool_idx, len(b.prefix_indices) : p].long()])
    row_b = r2t.req_to_token[b.req_pool_idx]
    row_b[p] = int(alloc.alloc_decode([p + 1], [int(row_b[p - 1])])[0])
    b.output_ids.append(10)
    cache.cache_finished_req(b)
    assert cache.protected_size() == 0 and r2t.available_size() == r2t.size
    assert alloc.available_size() + cache.total_size() == size
    check_ownership(cache, alloc)
    cache.evict(size)
    assert alloc.available_size() == size


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_cache_finished_frees_duplicates(ps):
    size = 16 * ps
    r2t, alloc, cache = make(size, ps)
    prompt = list(range(2 * ps + 1))
    reqs = [FakeReq(list(prompt)) for _ in range(2)]
    for r in reqs:  # both admitted before either caches: both compute the same prompt
        admit(cache, r2t, r)
        assert len(r.prefix_indices) == 0
        run_prefill(cache, r2t, alloc, r, len(prompt))
        r.output_ids.append(5)
    used = 2 * 3 * ps  # each request holds 2 full pages + 1 partial page
    assert alloc.available_size() == size - used
    for r in reqs:
        cache.cache_finished_req(r)
    # Only one copy of the aligned part survives, in the tree; tails and duplicates are free.
    cached = len(prompt) - len(prompt) % ps
    assert cache.total_size() == cached and alloc.available_size() == size - cached
    check_ownership(cache, alloc)


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_disabled_cache(ps):
    size = 8 * ps
    r2t, alloc, _ = make(size, ps)
    for cache in (RadixCache(r2t, alloc, ps, disable=True), ChunkCache(r2t, alloc, ps)):
        req = FakeReq(list(range(2 * ps + 2)))
        admit(cache, r2t, req)
        assert req.prefix_indices.numel() == 0 and req.last_node is cache.root_node
        run_prefill(cache, r2t, alloc, req, ps + 1)
        cache.cache_unfinished_req(req)
        assert len(req.prefix_indices) == ps + 1 and cache.total_size() == 0
        run_prefill(cache, r2t, alloc, req, len(req.origin_input_ids))
        req.output_ids.append(1)
        assert cache.insert(req.origin_input_ids, req.prefix_indices) == 0
        assert cache.evictable_size() == 0 and cache.evict(10) == 0
        cache.cache_finished_req(req)
        assert alloc.available_size() == size and r2t.available_size() == r2t.size
