"""A grammar that starts after the thinking: ``<think>...</think>`` is free, the answer is
constrained (the ``require_reasoning`` sampling parameter, set by the chat route when a
reasoning parser is on and the request carries a constraint).

While thinking, every token is allowed except stop tokens (the answer must still come) and
tokens that would run past ``</think>`` in one piece (their tail would escape the grammar).
The thinking ends at the first token whose bytes end the text with ``</think>``; from there
the inner grammar (any backend) takes over at its start state.

Budget: the thinking must leave room for the rest of the marker plus the inner grammar's
shortest output; when the budget comes down to that, the marker is forced token by token, so
a budgeted request still closes its answer in time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sglite_runtime.constrained.base import BaseGrammar
from sglite_runtime.constrained.outlines_backend import pack_token_ids_np, write_row

THINK_END = b"</think>"


class ThinkVocab:
    """Per-vocabulary tables of the wrapper, built once per backend."""

    def __init__(self, token_bytes: list[bytes | None], stop_ids: list[int], vocab_size: int,
                 marker_ids: list[int]) -> None:
        self.token_bytes = token_bytes
        self.vocab_size = vocab_size
        self.marker_ids = marker_ids
        ok = [tid for tid, data in enumerate(token_bytes[:vocab_size])
              if data and tid not in stop_ids and not _runs_past_marker(data)]
        self.free_row = pack_token_ids_np(ok, vocab_size)
        self.free_ids = np.asarray(ok, dtype=np.int64)


def _runs_past_marker(data: bytes) -> bool:
    """True when ``data`` could complete ``</think>`` before its last byte (given the right
    thinking before it), so that its tail would escape the grammar."""
    return any(THINK_END.endswith(data[:k]) or THINK_END in data[:k] for k in range(1, len(data)))


class ThinkFirstGrammar(BaseGrammar):
    """Free thinking up to ``</think>``, then ``inner``."""

    def __init__(self, inner: BaseGrammar, vocab: ThinkVocab):
        self.inner = inner
        self.vocab = vocab
        self.tail = b""          # last bytes of the thinking (to spot the marker)
        self.thinking: list[int] = []
        self.done_thinking = False
        self.answer_tokens = 0
        self._budget: int | None = None
        self._inner_estimate: int | None = None  # the inner grammar does not move while thinking

    # -- budget -------------------------------------------------------------------------
    def set_token_budget(self, max_tokens: int | None) -> None:
        self._budget = max_tokens

    def remaining_tokens(self) -> int | None:
        return self.inner.remaining_tokens() if self.done_thinking else self._budget

    def _marker_left(self) -> int:
        """Tokens of the canonical ``</think>`` spelling still to write."""
        ids = self.vocab.marker_ids
        for done in range(len(ids), 0, -1):
            if self.thinking[-done:] == ids[:done]:
                return len(ids) - done
        return len(ids)

    def min_tokens_to_accept(self) -> int | None:
        if self.done_thinking:
            return self.inner.min_tokens_to_accept()
        inner = self.inner.min_tokens_to_accept()
        return None if inner is None else self._marker_left() + inner

    def is_accepting(self) -> bool:
        return self.done_thinking and self.inner.is_accepting()

    # -- stepping -----------------------------------------------------------------------
    def _inner_need(self) -> int | None:
        """Tokens the answer needs at least: exact, else the backend's estimate (an EBNF
        completion plan), so that thinking also ends in time before a best-effort grammar."""
        need = self.inner.min_tokens_to_accept()
        if need is None and hasattr(self.inner, "estimated_tokens_to_accept"):
            if self._inner_estimate is None:
                self._inner_estimate = self.inner.estimated_tokens_to_accept()
            need = self._inner_estimate
        return need

    def _closing(self) -> bool:
        """While thinking: must the marker be forced now to keep the answer in budget?  A free
        token may undo a partial marker, after which the whole marker is due again."""
        inner = self._inner_need()
        if self._budget is None or inner is None:
            return False
        return self._budget - 1 < len(self.vocab.marker_ids) + inner

    def accept_token(self, token_id: int) -> bool:
        token_id = int(token_id)
        if self.done_thinking:
            if not self.inner.accept_token(token_id):
                return False
            self.answer_tokens += 1
            return True
        data = self.vocab.token_bytes[token_id] if token_id < len(self.vocab.token_bytes) else None
        if not data or not self.vocab.free_row[token_id >> 5] >> (token_id & 31) & 1:
            return False
        self.thinking.append(token_id)
        self.tail = (self.tail + data)[-len(THINK_END):]
        if self._budget is not None:
            self._budget -= 1
        if self.tail.endswith(THINK_END):
            self.done_thinking = True
            if self._budget is not None:
                self.inner.set_token_budget(self._budget)
        return True

    def rollback(self, num_tokens: int) -> None:
        undo_answer = min(num_tokens, self.answer_tokens)
        if undo_answer:
            self.inner.rollback(undo_answer)
            self.answer_tokens -= undo_answer
        for _ in range(num_tokens - undo_answer):
            self.thinking.pop()
            self.done_thinking = False
            if self._budget is not None:
                self._budget += 1
        if num_tokens > undo_answer:
            data = b"".join(self.vocab.token_bytes[t] or b"" for t in self.thinking[-len(THINK_END):])
            self.tail = data[-len(THINK_END):]

    def fill_vocab_mask(self, vocab_mask: torch.Tensor, idx: int) -> None:
        if self.done_thinking:
            self.inner.fill_vocab_mask(vocab_mask, idx)
        elif self._closing():
            write_row(vocab_mask, idx, pack_token_ids_np(self._forced(), self.vocab.vocab_size))
        else:
            write_row(vocab_mask, idx, self.vocab.free_row)

    def _forced(self) -> list[int]:
        ids = self.vocab.marker_ids
        return [ids[len(ids) - self._marker_left()]]

    def allowed_token_ids(self) -> list[int]:
        if self.done_thinking:
            return self.inner.allowed_token_ids()
        return self._forced() if self._closing() else self.vocab.free_ids.tolist()

    def is_terminated(self) -> bool:
        return self.done_thinking and self.inner.is_terminated()

    def copy(self) -> "ThinkFirstGrammar":
        dup = ThinkFirstGrammar(self.inner.copy(), self.vocab)
        dup.tail, dup.thinking, dup.done_thinking = self.tail, list(self.thinking), self.done_thinking
        dup.answer_tokens, dup._budget = self.answer_tokens, self._budget
        dup._inner_estimate = self._inner_estimate
        return dup

    def try_jump_forward(self, tokenizer: Any) -> list[int] | None:
        return self.inner.try_jump_forward(tokenizer) if self.done_thinking else None
