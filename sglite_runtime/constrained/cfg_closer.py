"""Best-effort closing of an arbitrary context-free grammar within a token budget.

xgrammar does not expose its parse stack, so the exact "fewest tokens to acceptance" of an
EBNF state is unknown.  Instead a bounded beam search over bytes finds *a* short completion
from the current state (forced runs are taken whole with ``find_jump_forward_string``; at a
branch, closing punctuation, then ``0``, ``a`` and space are tried first).  Its length in bytes
bounds the tokens needed, because byte-level vocabularies spell every byte with one token.

The grammar then restricts tokens by the slack ``budget - 1 - len(plan)`` like the JSON scanner
(json_budget.py), assuming a byte raises the completion by at most ``growth_bound(spec)`` (a
byte may commit to the grammar's longest literal, e.g. `` WHERE ...``);
when the slack runs out, only tokens that spell a prefix of the plan are allowed, which keeps
the plan valid to the end.  That assumption and the bounded search are why this is best
effort: a grammar whose bytes can open long obligations, or whose shortest completion the
search misses, can still run out of budget (no 400 up front either).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np

from sglite_runtime.constrained.json_budget import MAX_GROWTH_PER_BYTE
from sglite_runtime.constrained.outlines_backend import pack_token_ids_np

#: Byte order tried at a branch: closers and separators first, then short fillers.
_FIRST = b"\"')]}>;.,: \n!?0a*-_/"
_PRIORITY = list(_FIRST) + [b for b in range(256) if b not in _FIRST]
_RANK = {b: i for i, b in enumerate(_PRIORITY)}

BEAM_WIDTH = 6
BRANCH = 4
MAX_PLAN_BYTES = 256
MAX_NODES = 400


def _allowed_bytes(matcher: Any, scratch: Any, byte_tokens: np.ndarray) -> list[int]:
    """Bytes ``b`` whose single-byte token the matcher allows next, in priority order."""
    matcher.fill_next_token_bitmask(scratch, 0)
    row = scratch.numpy()[0]
    valid = byte_tokens >= 0
    ids = byte_tokens[valid]
    bits = (row[ids >> 5] >> (ids & 31)) & 1
    allowed = np.flatnonzero(valid)[bits.astype(bool)]
    return sorted(allowed.tolist(), key=_RANK.__getitem__)


_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')


def growth_bound(kind: str, spec: Any) -> int:
    """How much one byte may lengthen the shortest completion, estimated from the spec: it
    may commit to the longest literal (an EBNF string, a JSON key, a choice)."""
    text = spec if isinstance(spec, str) else json.dumps(spec)
    if kind == "regex":
        return MAX_GROWTH_PER_BYTE + min(len(text), 64)
    longest = max((len(m) for m in _QUOTED.findall(text)), default=0)
    return MAX_GROWTH_PER_BYTE + longest + (2 if kind == "json" else 0)


def find_completion(matcher: Any, scratch: Any, byte_tokens: np.ndarray) -> bytes | None:
    """Bytes that bring ``matcher`` (not modified) to an accepting state, or None."""
    if matcher.is_completed():
        return b""
    beam: list[tuple[bytes, Any]] = [(b"", matcher.fork())]
    nodes = 0
    while beam and nodes < MAX_NODES:
        nxt: list[tuple[bytes, Any]] = []
        for path, m in beam:
            forced = m.find_jump_forward_string().encode()
            if forced:
                if not m.accept_string(forced):
                    continue
                path += forced
                if m.is_completed():
                    return path
            for b in _allowed_bytes(m, scratch, byte_tokens)[:BRANCH]:
                nodes += 1
                child = m.fork()
                if not child.accept_string(bytes([b])):
                    continue
                if child.is_completed():
                    return path + bytes([b])
                if len(path) + 1 < MAX_PLAN_BYTES:
                    nxt.append((path + bytes([b]), child))
        # Keep the first children in priority order (not the shortest paths: a forced run
        # such as " FROM " is one decision, however many bytes it spells).
        beam = nxt[:BEAM_WIDTH]
    return None


class CfgCloser:
    """The plan (a completion from the current state) and the token filter it implies.

    Searching every step would cost milliseconds, so a lower bound of the slack is carried
    from the last search (a token of ``n`` bytes lowers it by at most ``1 + 4n`` under the
    growth assumption) and the search runs again only when that bound gets tight."""

    def __init__(self, backend: Any, growth: int = MAX_GROWTH_PER_BYTE):
        self.backend = backend
        self.growth = growth  # assumed bound of how much one byte lengthens the completion
        self.plan: bytes | None = None
        self.stale = True
        self.slack_lb: int | None = None

    def copy(self) -> "CfgCloser":
        dup = CfgCloser(self.backend, self.growth)
        dup.plan, dup.stale, dup.slack_lb = self.plan, self.stale, self.slack_lb
        return dup

    def reset(self) -> None:
        self.plan, self.stale, self.slack_lb = None, True, None

    def advanced(self, data: bytes | None) -> None:
        """A token was accepted: the plan survives if the token spelled its prefix."""
        if self.plan is not None and data and not self.stale and self.plan.startswith(data):
            self.plan = self.plan[len(data):]
            return
        self.stale = True
        if self.slack_lb is not None:
            self.slack_lb -= 1 + self.growth * len(data or b"")

    def restrict(self, row: np.ndarray, budget: int, matcher: Any) -> np.ndarray:
        """``row`` limited so that the plan (or a re-planned completion) still fits."""
        backend = self.backend
        growth = self.growth
        wide = growth * backend.max_token_bytes
        if self.slack_lb is not None and self.slack_lb >= wide:
            return row
        if self.stale:
            self.plan = find_completion(matcher, backend.scratch, backend.byte_tokens)
            self.stale = False
        if self.plan is None:
            self.slack_lb = None
            return row
        slack = budget - 1 - len(self.plan)
        self.slack_lb = slack
        if slack >= wide:
            return row
        if slack >= growth:
            return row & backend.length_rows[slack // growth]
        # Follow the plan with its longest-prefix token (fewest tokens to the end).
        ids = [backend.bytes_to_token[self.plan[:k]] for k in range(min(len(self.plan), backend.max_token_bytes), 0, -1)
               if self.plan[:k] in backend.bytes_to_token][:1]
        return row & pack_token_ids_np(ids or list(backend.stop_ids), backend.vocab_size)
