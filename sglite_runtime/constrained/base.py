"""The grammar interface the scheduler programs against, plus the INVALID marker.

A *grammar* is the per-request matcher state of a compiled constraint (a regex, a JSON
schema, a list of choices).  The scheduler only ever talks to this interface, so a second
backend (xgrammar, llguidance) can be dropped in without touching the scheduler.

Lifecycle (see docs/INTERNALS.md, "Constrained generation"):

1. ``GrammarCache.get_or_submit(key)`` gives a fresh grammar or a future;
2. every decode step ``fill_vocab_mask(mask, i)`` writes row ``i`` of the batch bitmask,
   then the backend's ``apply_vocab_mask(logits, mask)`` masks the whole batch at once;
3. after sampling, ``accept_token(id)`` advances the state on the CPU;
4. the request finishes when ``is_terminated()``.
"""

from __future__ import annotations

import abc
from typing import Any, Hashable

import torch

#: Kinds of constraint a request may carry.  ``json_object`` is OpenAI's
#: ``response_format={"type": "json_object"}`` (any JSON object, bounded depth).
GRAMMAR_KINDS: tuple[str, ...] = ("regex", "json", "json_object", "choices")

#: Longest spec accepted (characters of the regex / serialized schema).  Compilation cost
#: grows with the spec, and an unbounded one is a denial-of-service vector.
MAX_SPEC_CHARS: int = 65_536

#: Bits per word of the packed vocabulary mask (int32 words, bit j of word w = token 32w+j).
MASK_BITS: int = 32

#: Default wall-clock budget for one compilation before the request is failed.
DEFAULT_COMPILE_TIMEOUT_S: float = 30.0

GrammarKey = tuple[str, str]


class InvalidGrammar:
    """Marker for a constraint that failed to compile; ``error`` says why.

    It is cached like a compiled grammar so that a bad spec sent again fails fast without
    recompiling.  The scheduler aborts the request with ``error`` (HTTP 400 upstream).
    """

    __slots__ = ("error",)

    def __init__(self, error: str) -> None:
        self.error = error

    def __repr__(self) -> str:
        return f"InvalidGrammar({self.error!r})"

    def __bool__(self) -> bool:
        # So that ``if grammar:`` treats a failure like "no grammar available".
        return False


#: A generic failure marker for callers that do not need a message.
INVALID = InvalidGrammar("invalid grammar")


def is_invalid(obj: Any) -> bool:
    """True when ``obj`` is a compilation failure marker."""
    return isinstance(obj, InvalidGrammar)


class BaseGrammar(abc.ABC):
    """Per-request matcher state.  Not thread-safe: one request, one scheduler thread."""

    @abc.abstractmethod
    def accept_token(self, token_id: int) -> bool:
        """Advance by one sampled token.  Returns False (state unchanged) if it is illegal."""

    @abc.abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` accepted tokens."""

    @abc.abstractmethod
    def fill_vocab_mask(self, vocab_mask: torch.Tensor, idx: int) -> None:
        """Write the allowed-token bitmask of the current state into ``vocab_mask[idx]``."""

    @abc.abstractmethod
    def allowed_token_ids(self) -> list[int]:
        """Token ids allowed next (including the stop ids when the state accepts)."""

    @abc.abstractmethod
    def is_terminated(self) -> bool:
        """True once generation must stop: a stop token was accepted, or the state
        accepts and nothing but a stop token may follow."""

    @abc.abstractmethod
    def copy(self) -> "BaseGrammar":
        """An independent matcher at the same state (shares the compiled automaton)."""

    def try_jump_forward(self, tokenizer: Any) -> list[int] | None:
        """Token ids forced by the grammar from the current state, or None.  Optional."""
        return None


class BaseGrammarBackend(abc.ABC):
    """Compiles constraint specs; owns the batch-mask helpers."""

    @abc.abstractmethod
    def compile(self, key: GrammarKey) -> Hashable:
        """Compile ``(kind, spec)`` into a shareable object (slow; runs in a worker thread).

        Raises ValueError with a user-facing message if the spec is invalid."""

    @abc.abstractmethod
    def new_grammar(self, compiled: Any) -> BaseGrammar:
        """A fresh per-request matcher at the start state of ``compiled``."""

    @staticmethod
    @abc.abstractmethod
    def allocate_vocab_mask(vocab_size: int, batch_size: int, device: Any) -> torch.Tensor:
        """An int32 bitmask ``[batch_size, ceil(vocab_size/32)]``, all tokens allowed."""

    @staticmethod
    @abc.abstractmethod
    def apply_vocab_mask(logits: torch.Tensor, vocab_mask: torch.Tensor) -> None:
        """Set the logits of disallowed tokens to -inf, in place, for the whole batch."""
