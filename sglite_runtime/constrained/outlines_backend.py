"""Grammar backend on outlines-core: a regex/JSON-schema automaton over token ids.

Compilation (``Index(regex, vocabulary)``) is expensive and runs in the GrammarCache's
worker threads (the Rust build releases the GIL).  The compiled ``CompiledIndex`` is
immutable and shared by every request with the same spec; each request gets a cheap
``OutlinesGrammar`` holding an int state and a rollback stack.

The per-token cost is the mask: ``Index.get_allowed_tokens`` is tens of microseconds and
grows with the vocabulary, so each state's packed bitmask row is built once, on first visit,
and cached on the shared ``CompiledIndex``; afterwards ``fill_vocab_mask`` is a row copy.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import outlines_core
import torch

from sglite_runtime.constrained.base import MASK_BITS, BaseGrammar, BaseGrammarBackend, GrammarKey
from sglite_runtime.constrained.compile_worker import build_outlines_index, token_distances
from sglite_runtime.constrained.masks import (  # noqa: F401  (re-exported: other backends import them here)
    _MaskView,
    mask_array,
    num_mask_words,
    pack_token_ids,
    pack_token_ids_np,
    write_row,
)
from sglite_runtime.constrained.specs import (
    DEFAULT_JSON_OBJECT_DEPTH,
    DEFAULT_WHITESPACE,
    schema_from_pydantic,
    spec_to_regex,
    validate_spec,
)
from sglite_runtime.constrained.token_budget import BudgetTables
from sglite_runtime.constrained.vocabulary import build_vocabulary, resolve_eos_token_ids

logger = logging.getLogger(__name__)

__all__ = ["CompiledIndex", "OutlinesGrammar", "OutlinesGrammarBackend", "schema_from_pydantic", "validate_spec"]

#: State value after a stop token was accepted (outlines state ids are non-negative).
TERMINATED = -1
DEFAULT_MAX_ROLLBACK = 200


class CompiledIndex(BudgetTables):
    """An outlines Index plus per-state caches (mask rows, stop-only flags, jump-forward).

    Shared across requests; caches are filled from the scheduler thread only, and a dict
    assignment is atomic under the GIL, so no lock is needed."""

    def __init__(
        self,
        key: GrammarKey,
        regex: str,
        index: outlines_core.Index,
        backend: "OutlinesGrammarBackend",
        distances: dict[int, int] | None = None,
    ):
        self.key = key
        self.regex = regex
        self.index = index
        self.vocab_size = backend.vocab_size
        self.stop_ids = backend.stop_ids
        self.token_bytes = backend.token_bytes
        self.single_byte_token = backend.single_byte_token
        self.bytes_to_token = backend.bytes_to_token
        self.max_token_bytes = backend.max_token_bytes
        self.initial_state: int = index.get_initial_state()
        self._stop_set = frozenset(self.stop_ids)
        self._rows: dict[int, np.ndarray] = {}
        self._allowed: dict[int, tuple[int, ...]] = {}
        self._only_stop: dict[int, bool] = {}
        self.stop_row = pack_token_ids_np(self.stop_ids, self.vocab_size)
        self._extra_stops = pack_token_ids_np(self.stop_ids[1:], self.vocab_size) if len(self.stop_ids) > 1 else None
        #: state -> (forced byte, state after it) or None; filled by jump_forward.py.
        self.forced_step: dict[int, tuple[int, int] | None] = {}
        #: state -> fewest tokens to an accepting state (the budget guarantee's table).
        self.distances: dict[int, int] = token_distances(index) if distances is None else distances
        self.max_distance: int = max(self.distances.values(), default=0)
        # state -> (non-stop allowed ids, the distance after each), sorted by distance.
        self._successors: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._budget_rows: dict[tuple[int, int], tuple[np.ndarray, tuple[int, ...], bool] | None] = {}

    def allowed(self, state: int) -> tuple[int, ...]:
        """Allowed token ids at ``state``: the Index's, with every stop id when accepting."""
        got = self._allowed.get(state)
        if got is None:
            ids = [t for t in self.index.get_allowed_tokens(state) if t not in self._stop_set]
            if self.index.is_final_state(state):
                ids.extend(self.stop_ids)
            if not ids:
                # A live state with no way out would give an all -inf row (NaN softmax);
                # ending the request is the only safe choice.
                logger.warning("grammar %s: state %d has no allowed token; allowing stop", self.key[0], state)
                ids = list(self.stop_ids)
            got = tuple(ids)
            self._allowed[state] = got
        return got

    def row(self, state: int) -> np.ndarray:
        """Cached packed bitmask row of ``state`` (int32 numpy, ``[ceil(V/32)]``)."""
        row = self._rows.get(state)
        if row is None:
            row = pack_token_ids_np(list(self.allowed(state)), self.vocab_size)
            self._rows[state] = row
        return row

    def cached_row(self, state: int) -> np.ndarray | None:
        return self._rows.get(state)

    def store_row(self, state: int, written: np.ndarray) -> None:
        """Complete and cache a row the Guide just wrote (in place, in the batch mask).

        The Guide knows only the Index's EOS: add the other stop ids in accepting states,
        and rescue a row with no allowed token (an all -inf row would give NaNs)."""
        if self._extra_stops is not None and self.index.is_final_state(state):
            written |= self._extra_stops
        elif not written.any():
            written[:] = self.row(state)
        self._rows[state] = written.copy()

    def only_stop(self, state: int) -> bool:
        """True when ``state`` accepts and only a stop token may follow."""
        flag = self._only_stop.get(state)
        if flag is None:
            flag = self.index.is_final_state(state) and all(t in self._stop_set for t in self.allowed(state))
            self._only_stop[state] = flag
        return flag

    def is_stop(self, token_id: int) -> bool:
        return token_id in self._stop_set

    def next_state(self, state: int, token_id: int) -> int | None:
        """State after ``token_id``, TERMINATED for an accepted stop, None if illegal."""
        if token_id in self._stop_set:
            return TERMINATED if self.index.is_final_state(state) else None
        return self.index.get_next_state(state, token_id)


class OutlinesGrammar(BaseGrammar):
    """One request's position in a CompiledIndex.

    The state lives in an outlines ``Guide``: on a state's first visit its
    ``write_mask_into`` writes the row straight into the batch mask (cost grows with the
    number of allowed tokens, not the vocabulary) and the row is then cached on the shared
    CompiledIndex, so later visits by any request are a ~0.5 us row copy."""

    __slots__ = ("compiled", "guide", "max_rollback", "_terminated", "_history", "_budget")

    def __init__(self, compiled: CompiledIndex, max_rollback: int = DEFAULT_MAX_ROLLBACK):
        self.compiled = compiled
        self.max_rollback = max_rollback
        self.guide = outlines_core.Guide(compiled.index, max_rollback)
        self._terminated = False
        # Every accepted token (None: a stop token, which does not move the Guide).  Lets a
        # copy or a rollback deeper than the Guide's own buffer rebuild the Guide by replay.
        self._history: list[int | None] = []
        # Most tokens the history may hold (None: no budget); see BaseGrammar.
        self._budget: int | None = None

    # -- token budget ---------------------------------------------------------------------
    def set_token_budget(self, max_tokens: int | None) -> None:
        self._budget = None if max_tokens is None else len(self._history) + max(int(max_tokens), 0)

    def remaining_tokens(self) -> int | None:
        return None if self._budget is None else self._budget - len(self._history)

    def min_tokens_to_accept(self) -> int:
        return 0 if self._terminated else self.compiled.distance(self.guide.get_state())

    def _limited(self) -> tuple[np.ndarray, tuple[int, ...], bool] | None:
        """The budget-limited row/ids of the current state, or None when unrestricted."""
        if self._budget is None:
            return None
        remaining = self._budget - len(self._history)
        state = self.guide.get_state()
        if remaining <= 0:
            return self.compiled.stop_row, tuple(self.compiled.stop_ids), True
        return self.compiled.budget_limited(state, remaining - 1)

    @property
    def state(self) -> int:
        """Index state id, or TERMINATED once a stop token was accepted."""
        return TERMINATED if self._terminated else self.guide.get_state()

    def accept_token(self, token_id: int) -> bool:
        if self._terminated:
            return False
        token_id = int(token_id)
        state = self.guide.get_state()
        if self.compiled.is_stop(token_id):
            if not self.compiled.index.is_final_state(state):
                return False
            self._terminated = True
            self._history.append(None)
            return True
        if self.compiled.index.get_next_state(state, token_id) is None:
            return False
        self.guide.advance(token_id, return_tokens=False)
        self._history.append(token_id)
        return True

    def accept_tokens(self, token_ids: list[int]) -> int:
        """Accept tokens in order; returns how many were accepted before the first illegal one."""
        for n, tid in enumerate(token_ids):
            if not self.accept_token(tid):
                return n
        return len(token_ids)

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > len(self._history):
            raise ValueError(f"cannot roll back {num_tokens} tokens; only {len(self._history)} accepted")
        steps = 0
        for _ in range(num_tokens):
            if self._history.pop() is None:
                self._terminated = False
            else:
                steps += 1
        if steps and steps <= self.guide.get_allowed_rollback():
            self.guide.rollback_state(steps)
        elif steps:
            self._replay()

    def _replay(self) -> None:
        """Rebuild the Guide from the start state through the token history."""
        self.guide = outlines_core.Guide(self.compiled.index, self.max_rollback)
        for tid in self._history:
            if tid is not None:
                self.guide.advance(tid, return_tokens=False)

    def fill_vocab_mask(self, vocab_mask: torch.Tensor, idx: int) -> None:
        compiled = self.compiled
        if self._terminated:
            write_row(vocab_mask, idx, compiled.stop_row)
            return
        limited = self._limited()
        if limited is not None:
            write_row(vocab_mask, idx, limited[0])
            return
        state = self.guide.get_state()
        row = compiled.cached_row(state)
        view = mask_array(vocab_mask) if row is None else None
        if view is None:
            write_row(vocab_mask, idx, row if row is not None else compiled.row(state))
            return
        self.guide.write_mask_into(vocab_mask.data_ptr() + idx * view.strides[0], view.shape[1], 4)
        compiled.store_row(state, view[idx])

    def allowed_token_ids(self) -> list[int]:
        if self._terminated:
            return []
        limited = self._limited()
        if limited is not None:
            return list(limited[1])
        return list(self.compiled.allowed(self.guide.get_state()))

    def is_terminated(self) -> bool:
        if self._terminated:
            return True
        state = self.guide.get_state()
        if self._budget is not None:
            remaining = self._budget - len(self._history)
            if remaining <= 0:
                # Out of tokens: a complete match ends here as a "stop", not a truncation.
                return self.compiled.index.is_final_state(state)
            limited = self.compiled.budget_limited(state, remaining - 1)
            if limited is not None and limited[2]:
                # Only a stop token fits the budget: end now (a sampler that masks EOS, e.g.
                # for min_new_tokens, would otherwise face a row with nothing allowed).
                return self.compiled.index.is_final_state(state)
        return self.compiled.only_stop(state)

    def is_accepting(self) -> bool:
        """True when the text so far is a complete match (a stop token is allowed)."""
        return self._terminated or self.compiled.index.is_final_state(self.guide.get_state())

    def copy(self) -> "OutlinesGrammar":
        dup = OutlinesGrammar(self.compiled, self.max_rollback)
        if self._history:
            # Mid-stream copies are rare (~0.3 us per replayed token); copying the Guide
            # itself would pickle its whole Index and loses its rollback buffer.
            dup._history = list(self._history)
            dup._terminated = self._terminated
            dup._replay()
        dup._budget = self._budget
        return dup

    def jump_forward_str(self) -> tuple[bytes, int] | None:
        """Forced bytes from here and the state after them (see jump_forward.py)."""
        from sglite_runtime.constrained.jump_forward import jump_forward_str

        return jump_forward_str(self)

    def try_jump_forward(self, tokenizer: Any) -> list[int] | None:
        """Token ids spelling the forced continuation; the state is NOT advanced."""
        from sglite_runtime.constrained.jump_forward import jump_forward_tokens

        return jump_forward_tokens(self, tokenizer) or None


_NUMPY_FLOATS = (torch.float32, torch.float16, torch.float64)


class OutlinesGrammarBackend(BaseGrammarBackend):
    """Compiles ``(kind, spec)`` keys against one tokenizer's vocabulary.

    ``vocab_size`` is the model's (possibly padded) logits width; ids the tokenizer does
    not know are never allowed.  ``eos_token_ids``: the stop ids allowed in accepting states
    (default: the tokenizer's EOS)."""

    def __init__(
        self,
        tokenizer: Any,
        vocab_size: int | None = None,
        whitespace_pattern: str = DEFAULT_WHITESPACE,
        eos_token_ids: int | list[int] | None = None,
        json_object_depth: int = DEFAULT_JSON_OBJECT_DEPTH,
        max_rollback: int = DEFAULT_MAX_ROLLBACK,
    ) -> None:
        self.tokenizer = tokenizer
        self.stop_ids: list[int] = resolve_eos_token_ids(tokenizer, eos_token_ids)
        self.vocabulary, self.token_bytes = build_vocabulary(tokenizer, self.stop_ids)
        self.vocab_size = vocab_size if vocab_size is not None else len(self.token_bytes)
        if self.vocab_size < len(self.token_bytes):
            logger.warning("vocab_size %d < tokenizer size %d", self.vocab_size, len(self.token_bytes))
        self.whitespace_pattern = whitespace_pattern
        self.json_object_depth = json_object_depth
        self.max_rollback = max_rollback
        # Byte value -> a token id spelling exactly that byte (jump-forward walks bytes).
        # Exact bytes -> token id (for spelling a forced string with vocabulary tokens).
        self.single_byte_token: dict[int, int] = {}
        self.bytes_to_token: dict[bytes, int] = {}
        for tid, data in enumerate(self.token_bytes):
            if data is not None and tid < self.vocab_size:
                self.bytes_to_token.setdefault(data, tid)
                if len(data) == 1:
                    self.single_byte_token.setdefault(data[0], tid)
        self.max_token_bytes = max((len(b) for b in self.bytes_to_token), default=1)

    # -- compilation ------------------------------------------------------------------
    def to_regex(self, kind: str, spec: Any) -> str:
        return spec_to_regex(kind, spec, self.whitespace_pattern, self.json_object_depth)

    def validate(self, kind: str, spec: Any) -> None:
        """Cheap pre-check for the HTTP layer; raises ValueError with the reason."""
        validate_spec(kind, spec, self.whitespace_pattern)

    def compile(self, key: GrammarKey) -> CompiledIndex:
        """In-process compile (tests, TP ranks); the server uses ``worker_task``."""
        target, args = self.worker_task(key)
        try:
            result = build_outlines_index(*args)
        except ValueError as exc:
            raise ValueError(f"cannot compile {key[0]} constraint: {exc}") from None
        return self.finish_compile(key, result)

    def worker_task(self, key: GrammarKey) -> tuple[str, tuple]:
        """Index build (and distances) for a worker process: ``(regex, vocabulary)``."""
        return "compile_worker:build_outlines_index", (self.to_regex(*key), self.vocabulary)

    def finish_compile(self, key: GrammarKey, result: Any) -> CompiledIndex:
        regex, index, distances = result
        return CompiledIndex(key, regex, index, self, distances)

    def new_grammar(self, compiled: CompiledIndex) -> OutlinesGrammar:
        return OutlinesGrammar(compiled, self.max_rollback)

    # -- batch masks ------------------------------------------------------------------
    @staticmethod
    def allocate_vocab_mask(vocab_size: int, batch_size: int, device: Any = "cpu") -> torch.Tensor:
        # All ones (-1): rows of unconstrained requests stay a no-op under apply_vocab_mask.
        return torch.full((batch_size, num_mask_words(vocab_size)), -1, dtype=torch.int32, device=device)

    @staticmethod
    def reset_vocab_mask_row(vocab_mask: torch.Tensor, idx: int) -> None:
        """Mark row ``idx`` unconstrained (every token allowed)."""
        vocab_mask[idx].fill_(-1)

    @staticmethod
    def move_vocab_mask(vocab_mask: torch.Tensor, device: Any) -> torch.Tensor:
        return vocab_mask.to(device, non_blocking=True)

    @staticmethod
    def apply_vocab_mask(logits: torch.Tensor, vocab_mask: torch.Tensor) -> None:
        """``logits[i, t] = -inf`` where bit t of row i is 0; one vectorized op per batch.

        Columns past the mask's width (a mask narrower than the logits) are disallowed."""
        vocab = logits.shape[-1]
        if logits.device.type == "cpu" and vocab_mask.device.type == "cpu":
            # On CPU numpy is ~2.5x faster than the shift-and-mask below (which builds a
            # [B, W, 32] int32 temporary), and the mask is most of a constrained step's overhead.
            packed = vocab_mask.contiguous().numpy().view(np.uint8)
            banned_np = np.unpackbits(packed, axis=1, bitorder="little") == 0
            covered = min(vocab, banned_np.shape[1])
            if covered < vocab:
                logits[:, covered:] = float("-inf")
            if logits.dtype in _NUMPY_FLOATS and not logits.requires_grad:
                np.copyto(logits[:, :covered].numpy(), -np.inf, where=banned_np[:, :covered])
            else:
                logits[:, :covered].masked_fill_(torch.from_numpy(banned_np[:, :covered]), float("-inf"))
            return
        if vocab_mask.device != logits.device:
            vocab_mask = vocab_mask.to(logits.device, non_blocking=True)
        shifts = torch.arange(MASK_BITS, device=logits.device, dtype=torch.int32)
        banned = ((vocab_mask.unsqueeze(-1) >> shifts) & 1).view(vocab_mask.shape[0], -1) == 0
        covered = min(vocab, banned.shape[1])
        if covered < vocab:
            logits[:, covered:] = float("-inf")
        logits[:, :covered].masked_fill_(banned[:, :covered], float("-inf"))
