"""Radix cache: a prefix tree of token ids whose values are KV slots.

The tree owns the KV slots stored in its nodes; a running request owns the slots in its
``req_to_token`` row beyond the part the tree holds for it. Every slot is at any time either
free in the allocator, owned by exactly one tree node, or owned by exactly one request. The
operations below keep that invariant:

* ``match_prefix`` finds the longest cached prefix (splitting a node when the match ends inside
  it, so that the returned node covers exactly the match and can be locked).
* ``insert`` adds a sequence and returns how many leading tokens were already present; those
  leading slots of the caller's ``value`` are duplicates that the *caller* still owns and frees.
* ``inc_lock_ref`` / ``dec_lock_ref`` pin a path so that eviction cannot free slots a running
  request reads.
* ``evict`` frees least-recently-used unlocked leaves into the allocator.
* ``cache_finished_req`` / ``cache_unfinished_req`` hand a request's KV over to the tree.

Paging: with ``page_size > 1`` keys are truncated to whole pages, children are keyed by the
tuple of their first page, and nodes split only at page boundaries, so every node value is a
run of whole pages and ``allocator.free`` (which frees by page) never frees a page that some
other owner still holds. A request's unaligned tail stays with the request until it finishes.

``disable=True`` (or ``ChunkCache``) keeps the interface but caches nothing: ``match_prefix`` is
always empty and ``cache_*_req`` only free / re-point the request's own KV.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from sglite_runtime.managers.schedule_batch import Req
    from sglite_runtime.mem_cache.memory_pool import ReqToTokenPool, TokenToKVPoolAllocator

# A child's key: its first token (page_size 1) or the tuple of its first page's tokens.
ChildKey = int | tuple[int, ...]

logger = logging.getLogger(__name__)


class TreeNode:
    """One edge of the radix tree: a run of tokens (``key``) and the KV slots holding them."""

    _id_counter = itertools.count()

    __slots__ = ("children", "parent", "key", "value", "lock_ref", "last_access_time", "id")

    def __init__(
        self,
        parent: TreeNode | None = None,
        key: list[int] | None = None,
        value: torch.Tensor | None = None,
        lock_ref: int = 0,
        last_access_time: int = 0,
    ):
        self.children: dict[ChildKey, TreeNode] = {}
        self.parent: TreeNode | None = parent  # None only for the root
        self.key: list[int] = key if key is not None else []
        self.value: torch.Tensor = value if value is not None else torch.empty(0, dtype=torch.int64)
        self.lock_ref: int = lock_ref
        self.last_access_time: int = last_access_time
        self.id: int = next(TreeNode._id_counter)

    def __len__(self) -> int:
        return len(self.key)

    def __repr__(self) -> str:
        return f"TreeNode(id={self.id}, len={len(self.key)}, lock_ref={self.lock_ref}, t={self.last_access_time})"


class RadixCache:
    """Prefix cache over ``TokenToKVPoolAllocator`` slots (SGLang's ``RadixCache``).

    Args:
        req_to_token_pool: the request → token-slot table; rows are read and rewritten here.
        token_to_kv_pool_allocator: where evicted and duplicate slots are returned.
        page_size: keys and values are kept in whole pages of this many tokens.
        disable: cache nothing (``--disable-radix-cache``); the interface stays the same.
    """

    def __init__(
        self,
        req_to_token_pool: ReqToTokenPool,
        token_to_kv_pool_allocator: TokenToKVPoolAllocator,
        page_size: int = 1,
        disable: bool = False,
    ):
        assert page_size >= 1
        self.req_to_token_pool = req_to_token_pool
        self.token_to_kv_pool_allocator = token_to_kv_pool_allocator
        self.page_size = page_size
        self.disable = disable
        self.device = getattr(token_to_kv_pool_allocator, "device", "cpu")
        # A logical clock: monotonic and free of wall-clock ties/jumps, so LRU order is exact.
        self._clock = 0
        self.reset()

    # ---- bookkeeping ------------------------------------------------------------------------
    def reset(self) -> None:
        """Drop the whole tree. Slots are *not* freed: call only when idle, together with
        ``token_to_kv_pool_allocator.clear()`` and ``req_to_token_pool.clear()`` (flush_cache)."""
        self.root_node = TreeNode(key=[], value=self._empty(), lock_ref=1)  # root is always locked
        self._evictable_size = 0
        self._protected_size = 0

    def _empty(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64, device=self.device)

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _child_key(self, key: list[int]) -> ChildKey:
        return key[0] if self.page_size == 1 else tuple(key[: self.page_size])

    def _aligned_len(self, n: int) -> int:
        return n - n % self.page_size

    def _match_len(self, a: list[int], b: list[int]) -> int:
        """Length of the common prefix of ``a`` and ``b``, rounded down to whole pages."""
        n = min(len(a), len(b))
        i = 0
        while i < n and a[i] == b[i]:
            i += 1
        return self._aligned_len(i)

    def evictable_size(self) -> int:
        """Tokens held by unlocked nodes (reclaimable by ``evict``)."""
        return self._evictable_size

    def protected_size(self) -> int:
        """Tokens held by nodes some running request has locked."""
        return self._protected_size

    def total_size(self) -> int:
        """All tokens held in the tree, counted by walking it (independent of the counters)."""
        return sum(len(n.key) for n in self._iter_nodes())

    def _iter_nodes(self) -> list[TreeNode]:
        out, stack = [], [self.root_node]
        while stack:
            node = stack.pop()
            out.append(node)
            stack.extend(node.children.values())
        return out

    def all_values_flatten(self) -> torch.Tensor:
        """Every slot the tree owns, concatenated (for leak / double-ownership checks)."""
        values = [n.value for n in self._iter_nodes() if len(n.key)]
        return torch.cat(values) if values else self._empty()

    def pretty_print(self) -> None:
        """Log the tree (``logging.debug``), one node per line, indented by depth."""
        lines: list[str] = []
        stack: list[tuple[TreeNode, int]] = [(self.root_node, 0)]
        while stack:
            node, depth = stack.pop()
            head = node.key[:8]
            more = "..." if len(node.key) > 8 else ""
            lines.append(f"{'  ' * depth}{head}{more} len={len(node.key)} lock={node.lock_ref} t={node.last_access_time}")
            stack.extend((c, depth + 1) for c in node.children.values())
        logger.debug(
            "radix tree (total=%d evictable=%d protected=%d):\n%s",
            self.total_size(), self._evictable_size, self._protected_size, "\n".join(lines),
        )

    # ---- core tree operations -----------------------------------------------------------------
    def match_prefix(self, key: list[int]) -> tuple[torch.Tensor, TreeNode]:
        """Longest cached prefix of ``key`` (truncated to whole pages first).

        Returns the int64 slots of the matched tokens (empty when nothing matches) and the node
        where the match ends (the root when nothing matches). Splits the node the match ends
        inside, so locking the returned node pins exactly the matched tokens. Refreshes access
        times along the path. Callers that must compute at least one token pass ``ids[:-1]``.
        """
        if self.disable or len(key) < self.page_size:
            return self._empty(), self.root_node
        key = list(key[: self._aligned_len(len(key))])
        now = self._tick()
        node = self.root_node
        node.last_access_time = now
        values: list[torch.Tensor] = []
        while key:
            child = node.children.get(self._child_key(key))
            if child is None:
                break
            child.last_access_time = now
            n = self._match_len(child.key, key)
            if n < len(child.key):
                child = self._split_node(child, n)
                values.append(child.value)
                node = child
                break
            values.append(child.value)
            node = child
            key = key[n:]
        return (torch.cat(values) if values else self._empty()), node

    def insert(self, key: list[int], value: torch.Tensor) -> int:
        """Insert ``key`` → ``value`` (both truncated to whole pages).

        Returns the number of leading tokens that were already present. The tree keeps its own
        slots for those; the caller still owns ``value[:returned]`` where it differs from the
        tree's (its duplicates) and must free them. The new suffix is stored as a clone of
        ``value[returned:]`` and the tree owns those slots from now on. Disabled: stores
        nothing and returns 0.
        """
        if self.disable:
            return 0
        n_aligned = self._aligned_len(len(key))
        assert value.numel() >= n_aligned, "value shorter than key"
        key = list(key[:n_aligned])
        value = value[:n_aligned].to(torch.int64)
        now = self._tick()
        node = self.root_node
        node.last_access_time = now
        present = 0
        while key:
            child = node.children.get(self._child_key(key))
            if child is None:
                break
            child.last_access_time = now
            n = self._match_len(child.key, key)
            if n < len(child.key):
                if n == len(key):
                    # The key ends inside this node: nothing to add, no need to split.
                    return present + n
                child = self._split_node(child, n)
            present += n
            key, value = key[n:], value[n:]
            node = child
        if key:
            leaf = TreeNode(parent=node, key=key, value=value.clone(), last_access_time=now)
            node.children[self._child_key(key)] = leaf
            self._evictable_size += len(key)
        return present

    def _split_node(self, child: TreeNode, n: int) -> TreeNode:
        """Cut ``child`` after ``n`` tokens; return the new upper node.

        The new node copies ``child.lock_ref``: every lock on ``child`` was taken by walking
        through its whole key, so it also covers the upper part, and handles held on ``child``
        (or deeper) stay valid and balanced. Sizes don't move between counters.
        """
        assert 0 < n < len(child.key) and n % self.page_size == 0
        parent = child.parent
        assert parent is not None
        new_node = TreeNode(
            parent=parent,
            key=child.key[:n],
            value=child.value[:n],
            lock_ref=child.lock_ref,
            last_access_time=child.last_access_time,
        )
        parent.children[self._child_key(child.key)] = new_node
        child.parent = new_node
        child.key = child.key[n:]
        child.value = child.value[n:]
        new_node.children[self._child_key(child.key)] = child
        return new_node

    # ---- locks --------------------------------------------------------------------------------
    def inc_lock_ref(self, node: TreeNode | None) -> int:
        """Lock the path ``node`` → root. Returns the change of ``evictable_size()`` (≤ 0)."""
        if self.disable or node is None:
            return 0
        delta = 0
        while node is not self.root_node:
            assert node.parent is not None, "locking a node that was evicted"
            if node.lock_ref == 0:
                self._evictable_size -= len(node.key)
                self._protected_size += len(node.key)
                delta -= len(node.key)
            node.lock_ref += 1
            node = node.parent
        return delta

    def dec_lock_ref(self, node: TreeNode | None) -> int:
        """Unlock the path ``node`` → root. Returns the change of ``evictable_size()`` (≥ 0)."""
        if self.disable or node is None:
            return 0
        delta = 0
        while node is not self.root_node:
            assert node is not None, "a locked node's path reaches the root"
            assert node.lock_ref > 0, "dec_lock_ref without a matching inc_lock_ref"
            if node.lock_ref == 1:
                self._evictable_size += len(node.key)
                self._protected_size -= len(node.key)
                delta += len(node.key)
            node.lock_ref -= 1
            node = node.parent
        return delta

    # ---- eviction -----------------------------------------------------------------------------
    def evict(self, num_tokens: int) -> int:
        """Free at least ``num_tokens`` tokens (if possible) from unlocked leaves, LRU first.

        Only leaves with ``lock_ref == 0`` are freed; a parent becomes a candidate once its
        last child is gone. Returns the number of tokens freed.
        """
        if self.disable or num_tokens <= 0:
            return 0
        # Rebuilt per call (as SGLang's Python cache does): the tree is small next to a forward.
        heap = [
            (n.last_access_time, n.id, n)
            for n in self._iter_nodes()
            if not n.children and n.lock_ref == 0 and n is not self.root_node
        ]
        heapq.heapify(heap)
        freed = 0
        while freed < num_tokens and heap:
            _, _, node = heapq.heappop(heap)
            self.token_to_kv_pool_allocator.free(node.value)
            freed += len(node.key)
            parent = self._delete_leaf(node)
            if parent is not self.root_node and not parent.children and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access_time, parent.id, parent))
        return freed

    def _delete_leaf(self, node: TreeNode) -> TreeNode:
        parent = node.parent
        assert parent is not None and not node.children and node.lock_ref == 0
        del parent.children[self._child_key(node.key)]
        self._evictable_size -= len(node.key)
        node.parent = None  # marks it evicted; a stale handle then fails loudly in inc_lock_ref
        return parent

    # ---- request hand-over --------------------------------------------------------------------
    def _protected_len(self, req: Req) -> int:
        # The tree-owned part of req.prefix_indices: it is a match result (page aligned) or the
        # output of cache_unfinished_req (tree part + the request's own unaligned tail).
        return self._aligned_len(len(req.prefix_indices))

    def owned_prefix_len(self, req: Req) -> int:
        """How many leading slots of the request's row the tree owns (and keeps when the
        request is retracted): none without a tree; else the page-aligned part of
        ``prefix_indices`` (its unaligned tail belongs to the request)."""
        return 0 if self.disable else self._protected_len(req)

    def cache_finished_req(self, req: Req, token_ids: list[int] | None = None) -> None:
        """Hand a finished request's KV to the tree and release everything else it holds.

        Reads ``req.origin_input_ids + req.output_ids``; the last output token has no KV, so the
        request's valid KV is ``req_to_token[req.req_pool_idx, :len(ids) - 1]``. Inserts the
        page-aligned part, frees the request's duplicates of tokens the tree already had, frees
        the unaligned tail and the request row, and unlocks ``req.last_node``. The request must
        not be used with this cache afterwards.

        ``token_ids`` overrides the tokens whose KV the row holds, for a request released right
        after a prefill (prefill-only, or aborted mid-prefill), where every token has KV.
        """
        assert req.req_pool_idx is not None, "only a request that holds a row can be cached"
        if token_ids is not None:
            ids = list(token_ids)
        else:
            ids = (list(req.origin_input_ids) + list(req.output_ids))[:-1]
        kv_len = len(ids)
        row = self.req_to_token_pool.req_to_token[req.req_pool_idx]
        kv_indices = row[:kv_len].to(torch.int64)
        allocator = self.token_to_kv_pool_allocator
        if self.disable:
            allocator.free(kv_indices)
            self.req_to_token_pool.free(req.req_pool_idx)
            return
        aligned = self._aligned_len(kv_len)
        new_prefix_len = self.insert(ids[:aligned], kv_indices[:aligned])
        protected = self._protected_len(req)
        assert new_prefix_len >= protected, "the locked prefix vanished from the tree"
        # Tokens [protected, new_prefix_len) were inserted by someone else meanwhile: ours are
        # duplicates. Then the unaligned tail, which the tree never holds.
        allocator.free(kv_indices[protected:new_prefix_len])
        allocator.free(kv_indices[aligned:])
        self.req_to_token_pool.free(req.req_pool_idx)
        self.dec_lock_ref(req.last_node)

    def cache_unfinished_req(self, req: Req) -> None:
        """Hand the KV of ``req.fill_ids`` (computed so far) to the tree, keep the request going.

        Preconditions: ``req_to_token[req.req_pool_idx, :len(req.fill_ids)]`` holds valid KV for
        every token of ``req.fill_ids``; ``req.prefix_indices`` / ``req.last_node`` are what the
        last ``match_prefix`` (or the last call of this method) set.

        Effects: the page-aligned part of ``fill_ids`` is in the tree and locked through the new
        ``req.last_node`` (the old lock is released); the row's aligned part is rewritten with
        the tree's slots (our duplicates are freed); ``req.prefix_indices`` is the whole
        computed KV, ``len(fill_ids)`` slots: the tree's aligned part followed by the
        request's own unaligned tail, which the request still owns. The next chunk therefore
        starts at ``len(req.prefix_indices)``, continuing the tail's page
        (``last_loc = req.prefix_indices[-1]``). ``req_pool_idx`` stays allocated.
        """
        ids = list(req.fill_ids)
        kv_len = len(ids)
        row = self.req_to_token_pool.req_to_token[req.req_pool_idx]
        kv_indices = row[:kv_len].to(torch.int64)
        if self.disable:
            req.prefix_indices = kv_indices.clone()
            return
        aligned = self._aligned_len(kv_len)
        protected = self._protected_len(req)
        new_prefix_len = self.insert(ids[:aligned], kv_indices[:aligned])
        assert new_prefix_len >= protected, "the locked prefix vanished from the tree"
        self.token_to_kv_pool_allocator.free(kv_indices[protected:new_prefix_len])

        new_indices, new_last_node = self.match_prefix(ids[:aligned])
        assert new_indices.numel() == aligned, "just-inserted tokens must match in full"
        # Re-point the row at the tree's slots; positions below `protected` already are.
        row[protected:aligned] = new_indices[protected:].to(row.dtype)

        self.inc_lock_ref(new_last_node)
        self.dec_lock_ref(req.last_node)
        req.prefix_indices = torch.cat((new_indices, kv_indices[aligned:]))
        req.last_node = new_last_node


class ChunkCache(RadixCache):
    """The disabled cache as its own class: same interface, caches nothing."""

    def __init__(
        self,
        req_to_token_pool: ReqToTokenPool,
        token_to_kv_pool_allocator: TokenToKVPoolAllocator,
        page_size: int = 1,
        disable: bool = True,
    ):
        super().__init__(req_to_token_pool, token_to_kv_pool_allocator, page_size, disable=True)
