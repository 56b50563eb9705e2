"""``--grammar-backend``: which engine compiles which kind of constraint.

* ``outlines`` (default): outlines-core for regex, JSON schema and choices (DFA masks with the
  exact budget guarantee); xgrammar for what a DFA cannot express: ``ebnf`` grammars and
  ``json_object`` (JSON nested to any depth).
* ``xgrammar``: xgrammar for every kind.

The router is itself a BaseGrammarBackend: keys carry their kind, so the GrammarCache and
the scheduler need not know that two engines exist.  Both engines write the same packed
mask layout, so one batch mask holds rows of both.
"""

from __future__ import annotations

from typing import Any

from sglite_runtime.constrained.base import BaseGrammar, BaseGrammarBackend, GrammarKey
from sglite_runtime.constrained.outlines_backend import OutlinesGrammarBackend
from sglite_runtime.constrained.reasoning_grammar import ThinkFirstGrammar, ThinkVocab
from sglite_runtime.constrained.specs import validate_spec
from sglite_runtime.constrained.xgrammar_backend import XGrammarBackend, check_ebnf

#: Values of ``--grammar-backend``.
GRAMMAR_BACKENDS = ("outlines", "xgrammar")

#: Kinds only a context-free engine can compile.
CFG_KINDS = ("ebnf", "json_object")


def validate_constraint(kind: str, spec: Any) -> None:
    """Cheap check for the HTTP layer (ValueError -> 400), whatever the backend."""
    if kind == "ebnf":
        check_ebnf(spec)
    elif kind != "json_object":
        validate_spec(kind, spec)


class RoutedGrammarBackend(BaseGrammarBackend):
    """Sends each key to the engine of its kind; compiled objects remember their engine."""

    def __init__(self, name: str, tokenizer: Any, vocab_size: int | None = None,
                 eos_token_ids: int | list[int] | None = None, whitespace_pattern: str | None = None) -> None:
        if name not in GRAMMAR_BACKENDS:
            raise ValueError(f"grammar_backend must be one of {GRAMMAR_BACKENDS}, got {name!r}")
        self.name = name
        self.tokenizer = tokenizer
        self._think_vocab: ThinkVocab | None = None
        self.cfg = XGrammarBackend(tokenizer, vocab_size=vocab_size, eos_token_ids=eos_token_ids)
        ws: dict[str, Any] = {} if whitespace_pattern is None else {"whitespace_pattern": whitespace_pattern}
        self.outlines = (OutlinesGrammarBackend(tokenizer, vocab_size=vocab_size, eos_token_ids=eos_token_ids, **ws)
                         if name == "outlines" else None)

    def think_first(self, grammar: BaseGrammar) -> ThinkFirstGrammar:
        """``grammar`` applied after the ``<think>...</think>`` part (``require_reasoning``)."""
        if self._think_vocab is None:
            marker = self.tokenizer.encode("</think>", add_special_tokens=False)
            self._think_vocab = ThinkVocab(self.cfg.token_bytes, self.cfg.stop_ids, self.cfg.vocab_size, list(marker))
        return ThinkFirstGrammar(grammar, self._think_vocab)

    def engine_for(self, kind: str) -> BaseGrammarBackend:
        if self.outlines is None or kind in CFG_KINDS:
            return self.cfg
        return self.outlines

    def validate(self, kind: str, spec: Any) -> None:
        validate_constraint(kind, spec)

    def compile(self, key: GrammarKey) -> Any:
        return self.engine_for(key[0]).compile(key)

    def worker_task(self, key: GrammarKey) -> tuple[str, tuple] | None:
        return self.engine_for(key[0]).worker_task(key)

    def finish_compile(self, key: GrammarKey, payload: Any) -> Any:
        return self.engine_for(key[0]).finish_compile(key, payload)

    def new_grammar(self, compiled: Any) -> BaseGrammar:
        return self.engine_for(compiled.key[0]).new_grammar(compiled)

    allocate_vocab_mask = staticmethod(OutlinesGrammarBackend.allocate_vocab_mask)
    apply_vocab_mask = staticmethod(OutlinesGrammarBackend.apply_vocab_mask)
    move_vocab_mask = staticmethod(OutlinesGrammarBackend.move_vocab_mask)
    reset_vocab_mask_row = staticmethod(OutlinesGrammarBackend.reset_vocab_mask_row)
