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


def tree_map(cache: RadixCache) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Page-aligned prefix (a tuple) → slots of its last page, for every page the tree holds."""
    ps = cache.page_size
    out: dict[tuple[int, ...], tuple[int, ...]] = {}
    stack: list[tuple[TreeNode, tuple[int, ...]]] = [(cache.root_node, ())]
    while stack:
        node, path = stack.pop()
        vals = node.value.tolist()
        for i in range(0, len(node.key), ps):
            out[path + tuple(node.key[: i + ps])] = tuple(vals[i : i + ps])
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
    cache.pretty_print()  # logs at debug level; must not raise


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


# ---- stateful property test of the tree -------------------------------------------------------
def blocks_for(ps: int) -> list[list[int]]:
    """Page-sized token blocks; blocks 0 and 2 share a first half, so keys diverge mid-page."""
    return [[0] * ps, [1] * ps, [0] * (ps // 2) + [2] * (ps - ps // 2), [3] * ps]


class TreeMachine(RuleBasedStateMachine):
    """Random insert / match / lock / unlock / evict against a reference map.

    ``ref`` maps every cached page-aligned prefix (a tuple) to the slots of its last page
    (per page, not per token: two keys sharing half a page share no slot). It is exact:
    rules that add tokens extend it, and evict prunes it to what survived after checking that
    the tree never invented or moved a slot.
    """

    page_size = 1
    num_pages = 24

    def __init__(self):
        super().__init__()
        ps = self.page_size
        self.r2t, self.alloc, self.cache = make(self.num_pages * ps, ps)
        self.blocks = blocks_for(ps)
        self.ref: dict[tuple[int, ...], int] = {}
        self.locks: list[tuple[TreeNode, tuple[int, ...]]] = []

    keys = st.tuples(st.lists(st.integers(0, 3), max_size=4), st.integers(0, 15))

    def to_key(self, spec) -> list[int]:
        blocks, tail = spec
        key = [t for b in blocks for t in self.blocks[b]]
        return key + [4] * (tail % self.page_size)

    def longest_ref(self, key: list[int]) -> int:
        n = len(key) - len(key) % self.page_size
        while n and tuple(key[:n]) not in self.ref:
            n -= self.page_size
        return n

    def alloc_with_evict(self, n: int) -> torch.Tensor | None:
        out = self.alloc.alloc(n)
        if out is None:
            self.cache.evict(n - self.alloc.available_size())
            self.sync_after_evict()
            out = self.alloc.alloc(n)
        return out

    def sync_after_evict(self) -> None:
        ps = self.page_size
        now = tree_map(self.cache)
        assert all(self.ref[k] == v for k, v in now.items())
        for node, path in self.locks:  # locked paths survive eviction intact
            assert all(tuple(path[:i]) in now for i in range(ps, len(path) + 1, ps))
            assert node is self.cache.root_node or node.parent is not None
        self.ref = now

    @rule(spec=keys, fresh=st.booleans())
    def insert(self, spec, fresh):
        key = self.to_key(spec)
        n = len(key) - len(key) % self.page_size
        if fresh:
            # Compute everything, then insert: the present part comes back as duplicates.
            value = self.alloc_with_evict(n)
            if value is None:
                return
            present = self.cache.insert(key, value)
            assert present == self.longest_ref(key)
            self.alloc.free(value[:present])
        else:
            idx, node = self.cache.match_prefix(key)
            self.cache.inc_lock_ref(node)  # keep the prefix alive while allocating
            new = self.alloc_with_evict(n - len(idx))
            if new is not None:
                value = torch.cat((idx, new))
                present = self.cache.insert(key, value)
                assert present == len(idx)
            self.cache.dec_lock_ref(node)
            if new is None:
                return
        vals = value.tolist()
        for i in range(present, n, self.page_size):
            self.ref[tuple(key[: i + self.page_size])] = tuple(vals[i : i + self.page_size])

    @rule(spec=keys)
    def match(self, spec):
        key = self.to_key(spec)
        idx, node = self.cache.match_prefix(key)
        assert idx.numel() == self.longest_ref(key)
        ps = self.page_size
        assert idx.tolist() == [s for i in range(ps, idx.numel() + 1, ps) for s in self.ref[tuple(key[:i])]]
        if idx.numel() == 0:
            assert node is self.cache.root_node
        else:
            assert int(node.value[-1]) == int(idx[-1])

    @rule(spec=keys)
    def lock(self, spec):
        key = self.to_key(spec)
        idx, node = self.cache.match_prefix(key)
        before = self.cache.evictable_size()
        delta = self.cache.inc_lock_ref(node)
        assert self.cache.evictable_size() == before + delta
        self.locks.append((node, tuple(key[: idx.numel()])))

    @precondition(lambda self: self.locks)
    @rule(i=st.integers(0, 100))
    def unlock(self, i):
        node, _ = self.locks.pop(i % len(self.locks))
        self.cache.dec_lock_ref(node)

    @rule(n=st.integers(0, 80))
    def evict(self, n):
        before = self.cache.evictable_size()
        freed = self.cache.evict(n)
        assert freed >= min(n, before)  # every unlocked token is reachable by leaf eviction
        assert self.cache.evictable_size() == before - freed
        self.sync_after_evict()

    @invariant()
    def consistent(self):
        check_structure(self.cache)
        check_ownership(self.cache, self.alloc)
        assert self.alloc.available_size() + self.cache.total_size() == self.alloc.size
        assert tree_map(self.cache) == self.ref
        # lock_ref of each node == number of held locks whose path passes through it.
        expected: dict[int, int] = {}
        for node, _ in self.locks:
            while node is not self.cache.root_node:
                expected[node.id] = expected.get(node.id, 0) + 1
                node = node.parent
        for node in tree_nodes(self.cache):
            if node is not self.cache.root_node:
                assert node.lock_ref == expected.get(node.id, 0)

    def teardown(self):
        for node, _ in self.locks:
            self.cache.dec_lock_ref(node)
        self.cache.evict(10**9)
        assert self.alloc.available_size() == self.alloc.size and self.cache.total_size() == 0


class TreeMachinePaged(TreeMachine):
    page_size = 16
    num_pages = 10


_machine_settings = settings(max_examples=60, stateful_step_count=30, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])
TestTreeMachine = TreeMachine.TestCase
TestTreeMachine.settings = _machine_settings
TestTreeMachinePaged = TreeMachinePaged.TestCase
TestTreeMachinePaged.settings = _machine_settings


# ---- request lifecycle property test ----------------------------------------------------------
class Sim:
    """A minimal scheduler: admit (match + lock), chunked prefill, decode, finish.

    ``content[slot]`` records which token prefix a slot's KV was computed for, so any slot the
    cache hands out for a prefix is checked to really hold that prefix's KV.
    """

    MAX_ACTIVE = 3

    def __init__(self, ps: int, max_len: int):
        pages_per_req = -(-max_len // ps) + 1
        self.ps = ps
        self.r2t, self.alloc, self.cache = make(self.MAX_ACTIVE * pages_per_req * ps, ps, ctx=max_len + ps)
        self.content: dict[int, tuple[int, ...]] = {}
        self.computed: dict[int, int] = {}  # id(req) -> tokens with KV

    def extend(self, req: FakeReq, start: int, end: int, tokens: list[int]) -> None:
        row = self.r2t.req_to_token[req.req_pool_idx]
        last = [int(row[start - 1]) if start else -1]
        slots = self.alloc.alloc_extend([start], [end], last)
        if slots is None:
            pages = -(-end // self.ps) - (-(-start // self.ps))
            self.cache.evict(pages * self.ps - self.alloc.available_size())
            slots = self.alloc.alloc_extend([start], [end], last)
        assert slots is not None, "pool sized for MAX_ACTIVE requests must never run dry"
        row[start:end] = slots.to(torch.int32)
        for p, s in zip(range(start, end), slots.tolist()):
            self.content[s] = tuple(tokens[: p + 1])
        self.computed[id(req)] = end

    def check_prefix(self, tokens: list[int], idx: torch.Tensor) -> None:
        for p, s in enumerate(idx.tolist()):
            assert self.content[s] == tuple(tokens[: p + 1]), "cache returned a slot with foreign KV"

    def admit(self, req: FakeReq) -> None:
        req.req_pool_idx = self.r2t.alloc(1)[0]
        ids = req.origin_input_ids
        idx, node = self.cache.match_prefix(ids[:-1])  # leave at least one token to compute
        self.check_prefix(ids, idx)
        self.cache.inc_lock_ref(node)
        req.prefix_indices, req.last_node = idx, node
        self.r2t.req_to_token[req.req_pool_idx, : len(idx)] = idx.to(torch.int32)
        self.computed[id(req)] = len(idx)

    def prefill(self, req: FakeReq, chunk: int, n_out: int, rng: random.Random) -> bool:
        ids = req.origin_input_ids
        start = len(req.prefix_indices)
        end = min(len(ids), start + chunk)
        self.extend(req, start, end, ids)
        req.fill_ids = ids[:end]
        if end < len(ids):
            self.cache.cache_unfinished_req(req)  # a non-final chunk: its sample is discarded
            assert len(req.prefix_indices) == end
            self.check_prefix(ids, req.prefix_indices)
            return False
        req.output_ids.append(rng.randrange(3))
        if len(req.output_ids) >= n_out:
            self.cache.cache_finished_req(req)
            return True
        self.cache.cache_unfinished_req(req)
        self.check_prefix(ids, req.prefix_indices)
        return False

    def decode(self, req: FakeReq, n_out: int, rng: random.Random) -> bool:
        tokens = req.origin_input_ids + req.output_ids
        p = len(tokens) - 1  # the last sampled token gets its KV now
        self.extend(req, p, p + 1, tokens)
        req.output_ids.append(rng.randrange(3))
        if len(req.output_ids) >= n_out:
            self.cache.cache_finished_req(req)
            return True
        return False

    def check(self, active: list[FakeReq]) -> None:
        own = []
        tree_pages = set((self.cache.all_values_flatten() // self.ps).tolist())
        for r in active:
            row = self.r2t.req_to_token[r.req_pool_idx].long()
            n, lo = self.computed[id(r)], len(r.prefix_indices) - len(r.prefix_indices) % self.ps
            # The row holds the KV of every computed token; its protected part is the tree's.
            self.check_prefix(r.origin_input_ids + r.output_ids, row[:n])
            assert torch.equal(row[: len(r.prefix_indices)], r.prefix_indices)
            assert set((row[:lo] // self.ps).tolist()) <= tree_pages
            own.append(row[lo:n])
        check_structure(self.cache)
        check_ownership(self.cache, self.alloc, own)
        # Every slot the tree holds carries the KV of exactly its path.
        for prefix, slots in tree_map(self.cache).items():
            for j, s in enumerate(slots):
                assert self.content[s] == prefix[: len(prefix) - len(slots) + j + 1]


req_specs = st.lists(
    st.tuples(
        st.integers(0, 4),  # which shared base prefix; 3, 4: the same prompt as the last request
        st.lists(st.integers(0, 2), min_size=1, max_size=20),  # own suffix
        st.integers(1, 5),  # output tokens
        st.integers(1, 24),  # chunk size
    ),
    min_size=1,
    max_size=6,
)


@pytest.mark.parametrize("ps", PAGE_SIZES)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=req_specs, seed=st.integers(0, 2**16))
def test_request_lifecycle_no_leaks(ps, specs, seed):
    rng = random.Random(seed)
    bases = [[5] * 18, [5] * 9 + [6] * 9, [7] * 3]
    reqs: list[tuple[FakeReq, int, int]] = []
    for b, suf, n_out, chunk in specs:
        ids = list(reqs[-1][0].origin_input_ids) if b > 2 and reqs else bases[b % 3] + suf
        reqs.append((FakeReq(ids), n_out, chunk))
    max_len = max(len(r.origin_input_ids) + n for r, n, _ in reqs)
    sim = Sim(ps, max_len)
    waiting, active, state = list(reqs), [], {}
    while waiting or active:
        if waiting and len(active) < Sim.MAX_ACTIVE and (not active or rng.random() < 0.5):
            req, n_out, chunk = waiting.pop(0)
            sim.admit(req)
            active.append((req, n_out, chunk))
            state[id(req)] = "prefill"
        else:
            i = rng.randrange(len(active))
            req, n_out, chunk = active[i]
            if state[id(req)] == "prefill":
                done = sim.prefill(req, chunk, n_out, rng)
                if not done and len(req.fill_ids) == len(req.origin_input_ids):
                    state[id(req)] = "decode"
            else:
                done = sim.decode(req, n_out, rng)
            if done:
                active.pop(i)
        sim.check([r for r, _, _ in active])
    cache, alloc = sim.cache, sim.alloc
    assert cache.protected_size() == 0 and sim.r2t.available_size() == sim.r2t.size
    assert alloc.available_size() + cache.total_size() == alloc.size
    cache.evict(cache.total_size())
    assert alloc.available_size() == alloc.size and cache.total_size() == 0


@pytest.mark.parametrize("ps", PAGE_SIZES)
def test_chunked_requests_race_on_the_same_prompt(ps):
    """A holds an unaligned tail when B inserts the page containing it; A's next
    cache_unfinished_req must free its copy of that page and re-point its row at the tree."""
    rng = random.Random(0)
    al = lambda n: n - n % ps  # noqa: E731
    prompt = [9] * 51
    sim = Sim(ps, len(prompt) + 4)
    a, b = FakeReq(list(prompt)), FakeReq(list(prompt))
    sim.admit(a)
    assert not sim.prefill(a, 21, 2, rng)  # A computes [0, 21): with ps 16, a 5-token tail
    sim.admit(b)
    assert len(b.prefix_indices) == al(21)
    assert not sim.prefill(b, 40 - al(21), 2, rng)  # B computes up to 40 and caches al(40)
    sim.check([a, b])
    row_a = sim.r2t.req_to_token[a.req_pool_idx]
    a_tail_slot = int(row_a[20])
    assert not sim.prefill(a, 24, 2, rng)  # A computes [21, 45): duplicates of B's [al(21), al(40))
    assert sim.cache.total_size() == al(45)
    sim.check([a, b])
    tree_idx, _ = sim.cache.match_prefix(prompt[: al(45)])
    assert torch.equal(row_a[: al(45)].long(), tree_idx)
    if ps > 1:  # A's copy of the page that held its tail went back to the allocator
        assert a_tail_slot // ps in set(sim.alloc.free_pages.tolist())
    for r in (a, b):
        done = False
        while not done:
            done = sim.prefill(r, 64, 2, rng) if len(r.fill_ids) < len(prompt) else sim.decode(r, 2, rng)
    sim.check([])
    assert sim.cache.protected_size() == 0
    sim.cache.evict(10**9)
    assert sim.alloc.available_size() == sim.alloc.size
