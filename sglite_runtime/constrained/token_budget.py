"""Per-state token distances behind the complete-within-budget guarantee (issue 14).

``distances[state]`` is the fewest tokens from ``state`` to an accepting state (computed once
per compiled grammar by ``compile_worker.token_distances``).  With ``r`` tokens left, a token is
allowed only if the state after it is at most ``r - 1`` away; ``budget_limited`` gives that
row, built on first use from the state's successors sorted by distance, and cached per
``(state, limit)`` on the shared compiled grammar.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sglite_runtime.constrained.compile_worker import UNREACHABLE
from sglite_runtime.constrained.masks import pack_token_ids_np


class BudgetTables:
    """Mixin for CompiledIndex: needs ``index``, ``distances``, ``max_distance``,
    ``stop_ids``, ``_stop_set``, ``vocab_size``, ``_successors`` and ``_budget_rows``."""

    # Declared for the type checker; CompiledIndex.__init__ sets them.
    index: Any  # outlines_core Index
    distances: dict[int, int]
    max_distance: int
    stop_ids: Any  # a sequence of token ids
    _stop_set: frozenset[int]
    vocab_size: int
    _successors: dict[int, tuple[np.ndarray, np.ndarray]]
    _budget_rows: dict[tuple[int, int], tuple[np.ndarray, tuple[int, ...], bool] | None]

    def distance(self, state: int) -> int:
        """Fewest tokens from ``state`` to acceptance (UNREACHABLE if none)."""
        return self.distances.get(state, UNREACHABLE)

    def successors(self, state: int) -> tuple[np.ndarray, np.ndarray]:
        got = self._successors.get(state)
        if got is None:
            index, dist = self.index, self.distances
            toks = [t for t in index.get_allowed_tokens(state) if t not in self._stop_set]
            after = np.fromiter((dist.get(index.get_next_state(state, t), UNREACHABLE) for t in toks),
                                dtype=np.int64, count=len(toks))
            order = np.argsort(after, kind="stable")
            got = (np.asarray(toks, dtype=np.int64)[order], after[order])
            self._successors[state] = got
        return got

    def budget_limited(self, state: int, limit: int) -> tuple[np.ndarray, tuple[int, ...], bool] | None:
        """(mask row, allowed ids, only stop ids?) of ``state`` when every non-stop token must
        leave at most ``limit`` tokens to acceptance; None when the limit removes nothing."""
        if limit >= self.max_distance:
            return None  # every reachable state is close enough
        key = (state, limit)
        if key in self._budget_rows:
            return self._budget_rows[key]
        toks, after = self.successors(state)
        n = int(np.searchsorted(after, limit, side="right"))
        if n == len(toks):
            got = None
        else:
            if n == 0 and not self.index.is_final_state(state) and len(toks):
                # Only when the budget was already broken (e.g. a budget set too late):
                # the closest tokens still make the best progress.
                n = int(np.searchsorted(after, after[0], side="right"))
            ids = [int(t) for t in toks[:n]]
            if self.index.is_final_state(state):
                ids.extend(self.stop_ids)
            ids = ids or list(self.stop_ids)
            only_stop = all(t in self._stop_set for t in ids)
            got = (pack_token_ids_np(ids, self.vocab_size), tuple(ids), only_stop)
        self._budget_rows[key] = got
        return got
