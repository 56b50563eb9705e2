"""Grammar compile worker: builds outlines-core Indexes in a separate, killable process.

Torch-free on purpose: the GrammarCache starts this file as a script
(``python compile_worker.py <in_fd> <out_fd> <mem_bytes> <parent_pid>``), so a worker costs tens of MB
and starts in well under a second, and ``RLIMIT_AS`` can cap its address space without
tripping over torch's large virtual mappings.

Protocol (``multiprocessing.connection.Connection`` over two pipes, pickled tuples):
request ``("module:function", args)`` -> reply ``("ok", result)`` or ``("error", message)``.
A compile that runs out of memory kills the worker (Rust aborts on allocation failure) or
raises MemoryError; either way only this worker dies, and the cache starts a new one.

``token_distances`` is also imported by the in-process backend: the fewest tokens from
each Index state to an accepting state (reverse breadth-first search), the table behind
the complete-within-budget guarantee.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

#: Distance of a state from which no accepting state can be reached with the vocabulary.
UNREACHABLE = 2**31 - 1


def token_distances(index: Any) -> dict[int, int]:
    """``{state: fewest tokens to an accepting state}`` over an outlines-core Index.

    Every transition costs one token; accepting states are 0.  States that cannot reach
    acceptance are absent (callers read them as UNREACHABLE).  The graph is walked state by
    state (allowed tokens, then their next states) instead of through
    ``Index.get_transitions()``, whose dict of every edge costs ~1 GB of Python objects for a
    150k-token vocabulary; only each state's set of distinct successors is kept."""
    start = index.get_initial_state()
    reverse: dict[int, list[int]] = {}
    seen, stack = {start}, [start]
    while stack:
        state = stack.pop()
        nexts = {index.get_next_state(state, tok) for tok in index.get_allowed_tokens(state)}
        for nxt in nexts:
            if nxt is None or nxt == state:
                continue
            reverse.setdefault(nxt, []).append(state)
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    dist = {s: 0 for s in index.get_final_states() if s in seen}
    frontier = list(dist)
    while frontier:
        nxt_frontier = []
        for s in frontier:
            d = dist[s] + 1
            for prev in reverse.get(s, ()):
                if prev not in dist:
                    dist[prev] = d
                    nxt_frontier.append(prev)
        frontier = nxt_frontier
    return dist


def build_outlines_index(regex: str, vocabulary: Any) -> tuple[str, Any, dict[int, int]]:
    """``(regex, its outlines-core Index, the Index's token_distances)``."""
    import outlines_core

    try:
        index = outlines_core.Index(regex, vocabulary)
    except Exception as exc:  # outlines raises ValueError for syntax and vocabulary gaps
        raise ValueError(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None
    return regex, index, token_distances(index)


def _call(target: str, args: tuple) -> Any:
    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)(*args)


def _exit_with_parent(parent: int) -> None:
    """Exit as soon as the parent is gone, even mid-compile (the pipe's EOF is only seen
    between jobs; the Index build releases the GIL, so this thread runs meanwhile)."""
    import os
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def main(argv: list[str]) -> None:
    """Serve compile requests until the parent closes the pipe or exits."""
    import resource
    from multiprocessing.connection import Connection

    conn_in, conn_out, mem = Connection(int(argv[1])), Connection(int(argv[2])), int(argv[3])
    _exit_with_parent(int(argv[4]))
    if mem > 0:
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    while True:
        try:
            target, args = conn_in.recv()
        except (EOFError, OSError):
            return
        try:
            reply: tuple = ("ok", _call(target, args))
        except ValueError as exc:
            reply = ("error", str(exc))
        except MemoryError:
            reply = ("error", "out of memory")
        except Exception as exc:  # report, never die on a compiler bug
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn_out.send(reply)
        except MemoryError:
            conn_out.send(("error", "out of memory"))


if __name__ == "__main__":
    main(sys.argv)
