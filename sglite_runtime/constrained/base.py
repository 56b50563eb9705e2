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

Token budget (complete-within-budget guarantee, see ``BaseGrammar.set_token_budget``): the
scheduler calls ``set_token_budget(max_new_tokens)`` once when the grammar is attached and
rejects the request (HTTP 400) when ``min_tokens_to_accept()`` already exceeds it.  From then
on ``fill_vocab_mask`` / ``allowed_token_ids`` allow only tokens after which an accepting state
is still reachable in the tokens left, and ``is_terminated()`` turns True when the state
accepts and no token is left, so the output always closes in time (finish reason "stop").
"""

from __future__ import annotations

import abc
from typing import Any, Hashable

import torch

#: Kinds of constraint a request may carry.  ``json_object`` is OpenAI's
#: ``response_format={"type": "json_object"}`` (any JSON object, bounded depth).
GRAMMAR_KINDS: tuple[str, ...] = ("regex", "json", "json_object", "choices", "ebnf")

#: Longest spec accepted (characters of the regex / serialized schema).  Compilation cost
#: grows with the spec, and an unbounded one is a denial-of-service vector.
MAX_SPEC_CHARS: int = 65_536

#: Most ``choices`` one request may list, and the longest single choice (characters); the
#: joined choices must also fit in MAX_SPEC_CHARS.
MAX_CHOICES: int = 1024
MAX_CHOICE_CHARS: int = 4096

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
    """Per-request matcher state.  Not thread-safe: one request, one scheduler thread.

    Budget contract (every backend should implement it; the defaults below opt out):

    * ``set_token_budget(n)``: at most ``n`` more tokens may be accepted from the current
      state (a stop token counts as one).  ``None`` lifts the budget.  The budget goes down
      with ``accept_token``, back up with ``rollback``, and is kept by ``copy``.
    * ``min_tokens_to_accept()``: the fewest tokens from the current state to an accepting
      state (0 when accepting now; the stop token itself is not counted), or None when the
      backend cannot tell (then no budget guarantee and no up-front 400).
    * with a budget of ``r`` tokens left, ``fill_vocab_mask`` and ``allowed_token_ids``
      allow a non-stop token ``t`` only if ``min_tokens_to_accept`` after ``t`` is ``<= r - 1``
      (and a stop token only in an accepting state);
    * ``is_terminated()`` is also True when the state accepts and ``r == 0``.
    """

    def set_token_budget(self, max_tokens: int | None) -> None:
        """Limit the tokens still to be accepted (see the class docstring).  Default: ignored."""

    def remaining_tokens(self) -> int | None:
        """Tokens left under the budget, or None when there is no budget."""
        return None

    def min_tokens_to_accept(self) -> int | None:
        """Fewest tokens from the current state to an accepting state; None if unknown."""
        return None

    def is_accepting(self) -> bool:
        """True when the text so far is a complete match (a stop token is allowed)."""
        return self.is_terminated()

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
        """Compile ``(kind, spec)`` into a shareable object (slow; runs in a worker).

        Raises ValueError with a user-facing message if the spec is invalid.  The result
        may be built in a separate worker PROCESS and pickled back (see grammar_cache.py):
        keep it picklable, or override ``compile_in_worker``/``finish_compile``."""

    def worker_task(self, key: GrammarKey) -> tuple[str, tuple] | None:
        """Optional: run the slow part of compiling ``key`` in a killable worker process.

        Returns ``("module:function", args)``.  The GrammarCache runs it in a separate
        process (``compile_worker.py``, started as a script, memory-capped with RLIMIT_AS,
        killed at the compile timeout); ``module`` is imported there by name with this
        directory (``sglite_runtime/constrained/``) first on ``sys.path``, so a torch-free
        module in this folder is named by its bare file name (e.g. ``"compile_worker:..."``).
        ``args`` and the function's result must pickle.  The cache then calls
        ``finish_compile(key, result)`` in the scheduler process.  May raise ValueError
        (a user-facing rejection).  Default None: ``compile(key)`` runs in a thread instead.
        """
        return None

    def finish_compile(self, key: GrammarKey, result: Any) -> Any:
        """Build the shared compiled object from ``worker_task``'s result (cheap)."""
        raise NotImplementedError

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
