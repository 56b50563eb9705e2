"""Grammar backend on xgrammar: context-free grammars (EBNF), JSON at any depth.

outlines-core compiles regexes to a DFA, which cannot nest without bound; xgrammar runs a
pushdown automaton with precomputed per-token masks, so it serves

* ``ebnf``: SGLang's grammar syntax (GBNF style, ``root ::= ...``), which is xgrammar's own;
* ``json_object``: any JSON object, nested to any depth (``JSON_OBJECT_EBNF``);
* every other kind (regex, JSON schema, choices) when ``--grammar-backend xgrammar``.

Masks use the same packed int32 layout as the outlines backend (bit ``j`` of word ``w`` is
token ``32w + j``), so one batch mask holds rows of both backends.

Budget (see base.py): a CFG engine cannot tell the shortest way to acceptance in general.
For ``json_object`` a JSON scanner runs alongside (json_budget.py) and gives an upper bound,
so that kind closes within ``max_new_tokens``; for the others ``min_tokens_to_accept()``
is None (no up-front 400) and a searched completion plan closes them best-effort
(cfg_closer.py).
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import torch
import xgrammar

from sglite_runtime.constrained.base import BaseGrammar, BaseGrammarBackend, GrammarKey, MAX_SPEC_CHARS
from sglite_runtime.constrained.cfg_closer import CfgCloser, find_completion, growth_bound
from sglite_runtime.constrained.ebnf_check import unproductive_rules
from sglite_runtime.constrained.json_budget import JSON_OBJECT_EBNF, MAX_GROWTH_PER_BYTE, JsonCloser
from sglite_runtime.constrained.outlines_backend import (OutlinesGrammarBackend, num_mask_words, pack_token_ids_np,
                                                         write_row)
from sglite_runtime.constrained.specs import choices_regex, parse_schema, spec_to_regex
from sglite_runtime.constrained.vocabulary import compute_token_bytes, resolve_eos_token_ids

logger = logging.getLogger(__name__)

#: Kinds this backend compiles.
XGRAMMAR_KINDS = ("ebnf", "json_object", "json", "regex", "choices")


def check_ebnf(spec: Any) -> None:
    """Parse an EBNF grammar (cheap, no token masks); ValueError with the parser's reason."""
    if not isinstance(spec, str):
        raise ValueError(f"ebnf must be a string, got {type(spec).__name__}")
    if len(spec) > MAX_SPEC_CHARS:
        raise ValueError(f"ebnf grammar too long ({len(spec)} > {MAX_SPEC_CHARS} characters)")
    try:
        grammar = xgrammar.Grammar.from_ebnf(spec)
    except Exception as exc:  # xgrammar raises RuntimeError with "EBNF parser error at line ..."
        msg = str(exc).strip().splitlines()[0]
        raise ValueError(msg.split("] ", 1)[-1].split(": ", 1)[-1] if "grammar_parser" in msg else msg) from None
    dead = unproductive_rules(grammar)
    if dead:
        raise ValueError(f"ebnf rule {dead[0]!r} can never end: no finite string derives from it")


class CompiledXGrammar:
    """An xgrammar CompiledGrammar plus what each request's matcher needs."""

    def __init__(self, key: GrammarKey, compiled: Any, backend: "XGrammarBackend"):
        self.key = key
        self.compiled = compiled
        self.backend = backend
        self.track_json = key[0] == "json_object"
        self.growth = growth_bound(*key)


class XGrammarGrammar(BaseGrammar):
    """One request's xgrammar matcher (+ a JSON scanner for ``json_object`` budgets)."""

    def __init__(self, compiled: CompiledXGrammar, matcher: Any | None = None):
        self.compiled = compiled
        backend = compiled.backend
        self.matcher = matcher if matcher is not None else xgrammar.GrammarMatcher(
            compiled.compiled, override_stop_tokens=backend.stop_ids)
        self.closer: JsonCloser | None = JsonCloser() if compiled.track_json else None
        # Other kinds: a best-effort completion plan, searched near the end of the budget.
        self.planner: CfgCloser | None = None if compiled.track_json else CfgCloser(backend, compiled.growth)
        self._snaps: list[tuple] = []       # closer snapshots before each accepted token
        self._budget: int | None = None
        self._row: np.ndarray | None = None  # mask row of the current state (cached per step)

    # -- budget -------------------------------------------------------------------------
    def set_token_budget(self, max_tokens: int | None) -> None:
        self._budget = max_tokens

    def remaining_tokens(self) -> int | None:
        return self._budget

    def min_tokens_to_accept(self) -> int | None:
        if self.closer is None:
            return 0 if self.matcher.is_completed() else None
        return self.closer.distance()

    def is_accepting(self) -> bool:
        return self.matcher.is_terminated() or self.matcher.is_completed()

    def estimated_tokens_to_accept(self) -> int | None:
        """An upper bound of the tokens to acceptance (a searched completion's bytes), or None."""
        if self.closer is not None:
            return self.closer.distance()
        plan = find_completion(self.matcher, self.compiled.backend.scratch, self.compiled.backend.byte_tokens)
        return None if plan is None else len(plan)

    # -- stepping -----------------------------------------------------------------------
    def accept_token(self, token_id: int) -> bool:
        token_id = int(token_id)
        if self.matcher.is_terminated() or not self.matcher.accept_token(token_id):
            return False
        self._row = None
        token_bytes = self.compiled.backend.token_bytes
        data = token_bytes[token_id] if token_id < len(token_bytes) else None
        if self.closer is not None:
            self._snaps.append(self.closer.snapshot())
            if data:
                self.closer.feed(data)
        elif self.planner is not None:
            self.planner.advanced(data)
        if self._budget is not None:
            self._budget -= 1
        return True

    def rollback(self, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        self.matcher.rollback(num_tokens)
        self._row = None
        if self.closer is not None:
            for _ in range(num_tokens):
                if self._snaps:
                    self.closer.restore(self._snaps.pop())
        elif self.planner is not None:
            self.planner.reset()
        if self._budget is not None:
            self._budget += num_tokens

    def _grammar_row(self) -> np.ndarray:
        """The matcher's packed mask row of the current state (a fresh numpy array)."""
        backend = self.compiled.backend
        scratch = backend.scratch
        self.matcher.fill_next_token_bitmask(scratch, 0)
        return scratch.numpy()[0].copy()

    def _current_row(self) -> np.ndarray:
        if self._row is not None:
            return self._row
        backend = self.compiled.backend
        if self.matcher.is_terminated():
            row = backend.stop_row.copy()
        else:
            row = self._grammar_row()
            if self._budget is not None and self.closer is not None:
                row = self._budget_row(row)
            elif self._budget is not None and self.planner is not None:
                limited = self.planner.restrict(row, self._budget, self.matcher)
                row = limited if limited.any() else row
        self._row = row
        return row

    def _budget_row(self, row: np.ndarray) -> np.ndarray:
        """Keep only tokens after which the JSON can still close in the tokens left."""
        backend = self.compiled.backend
        assert self._budget is not None and self.closer is not None  # the caller checks both
        closer = self.closer
        slack = self._budget - 1 - closer.distance()
        if slack >= MAX_GROWTH_PER_BYTE * backend.max_token_bytes:
            return row
        if slack >= MAX_GROWTH_PER_BYTE:
            limited = row & backend.length_rows[slack // MAX_GROWTH_PER_BYTE]
        else:
            byte = closer.canonical_byte()
            tid = backend.single_byte_token.get(byte) if byte is not None else None
            limited = row & backend.stop_row if tid is None else row & pack_token_ids_np([tid], backend.vocab_size)
        # Never an empty row (all -inf logits): then the grammar's own row stands.
        return limited if limited.any() else row

    def fill_vocab_mask(self, vocab_mask: torch.Tensor, idx: int) -> None:
        write_row(vocab_mask, idx, self._current_row())

    def allowed_token_ids(self) -> list[int]:
        row = self._current_row()
        bits = np.unpackbits(row.view(np.uint8), bitorder="little")
        return np.flatnonzero(bits[: self.compiled.backend.vocab_size]).tolist()

    def is_terminated(self) -> bool:
        if self.matcher.is_terminated():
            return True
        if not self.matcher.is_completed():
            return False
        if self._budget is not None and self._budget <= 0:
            return True
        # Accepting, and nothing but a stop token may follow.
        row = self._current_row()
        return not (row & ~self.compiled.backend.stop_row).any()

    def copy(self) -> "XGrammarGrammar":
        dup = XGrammarGrammar(self.compiled, self.matcher.fork())
        if self.closer is not None:
            assert dup.closer is not None  # same compiled grammar, so it tracks JSON too
            dup.closer.restore(self.closer.snapshot())
            dup._snaps = list(self._snaps)
        elif self.planner is not None:
            dup.planner = self.planner.copy()
        dup._budget = self._budget
        dup._row = self._row
        return dup

    def try_jump_forward(self, tokenizer: Any) -> list[int] | None:
        if self.matcher.is_terminated():
            return None
        return list(self.matcher.find_jump_forward_tokens()) or None


class XGrammarBackend(BaseGrammarBackend):
    """Compiles ``(kind, spec)`` keys with one xgrammar GrammarCompiler."""

    def __init__(self, tokenizer: Any, vocab_size: int | None = None,
                 eos_token_ids: int | list[int] | None = None, max_threads: int = 1) -> None:
        self.tokenizer = tokenizer
        self.stop_ids: list[int] = resolve_eos_token_ids(tokenizer, eos_token_ids)
        token_bytes, _ = compute_token_bytes(tokenizer)
        self.vocab_size = vocab_size if vocab_size is not None else len(token_bytes)
        for tid in self.stop_ids:
            if 0 <= tid < len(token_bytes):
                token_bytes[tid] = None
        self.token_bytes = token_bytes
        self.info = xgrammar.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.stop_ids)
        self.compiler = xgrammar.GrammarCompiler(self.info, max_threads=max_threads, cache_enabled=False)
        # One scratch row for the matchers (the scheduler thread is the only user).
        self.scratch = torch.zeros((1, num_mask_words(self.vocab_size)), dtype=torch.int32)
        self.stop_row = pack_token_ids_np(self.stop_ids, self.vocab_size)
        self.single_byte_token: dict[int, int] = {}
        self.bytes_to_token: dict[bytes, int] = {}
        lengths = np.zeros(self.vocab_size, dtype=np.int64)
        for tid, data in enumerate(token_bytes[: self.vocab_size]):
            if data:
                lengths[tid] = len(data)
                self.bytes_to_token.setdefault(data, tid)
                if len(data) == 1:
                    self.single_byte_token.setdefault(data[0], tid)
        self.byte_tokens = np.array([self.single_byte_token.get(b, -1) for b in range(256)], dtype=np.int64)
        self.max_token_bytes = int(lengths.max(initial=1))
        # length_rows[k]: tokens of at most k bytes (stop ids included: they end the output).
        self.length_rows = [pack_token_ids_np(np.flatnonzero((lengths > 0) & (lengths <= k)).tolist()
                                              + self.stop_ids, self.vocab_size)
                            for k in range(self.max_token_bytes + 1)]

    # -- compilation ------------------------------------------------------------------
    def validate(self, kind: str, spec: Any) -> None:
        """Cheap pre-check for the HTTP layer; raises ValueError with the reason."""
        if kind == "ebnf":
            check_ebnf(spec)
        elif kind == "json":
            parse_schema(spec)
        elif kind != "json_object":
            spec_to_regex(kind, spec)

    def compile(self, key: GrammarKey) -> CompiledXGrammar:
        kind, spec = key
        try:
            if kind == "ebnf":
                check_ebnf(spec)
                compiled = self.compiler.compile_grammar(spec)
            elif kind == "json_object":
                compiled = self.compiler.compile_grammar(JSON_OBJECT_EBNF)
            elif kind == "json":
                schema = parse_schema(spec)
                # At most one whitespace character between tokens: bounded, like outlines' "[ ]?".
                compiled = self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=True,
                                                             max_whitespace_cnt=1)
            elif kind == "choices":
                compiled = self.compiler.compile_regex(choices_regex(json.loads(spec) if isinstance(spec, str) else spec))
            elif kind == "regex":
                compiled = self.compiler.compile_regex(spec_to_regex("regex", spec))
            else:
                raise ValueError(f"unknown constraint kind {kind!r}; expected one of {XGRAMMAR_KINDS}")
        except ValueError:
            raise
        except Exception as exc:  # xgrammar raises RuntimeError for what it cannot compile
            raise ValueError(f"cannot compile {kind} constraint: {str(exc).strip().splitlines()[0]}") from None
        return CompiledXGrammar(key, compiled, self)

    def new_grammar(self, compiled: CompiledXGrammar) -> XGrammarGrammar:
        return XGrammarGrammar(compiled)

    # -- batch masks (same layout as the outlines backend) -------------------------------
    allocate_vocab_mask = staticmethod(OutlinesGrammarBackend.allocate_vocab_mask)
    apply_vocab_mask = staticmethod(OutlinesGrammarBackend.apply_vocab_mask)
    move_vocab_mask = staticmethod(OutlinesGrammarBackend.move_vocab_mask)
    reset_vocab_mask_row = staticmethod(OutlinesGrammarBackend.reset_vocab_mask_row)


__all__ = ["CompiledXGrammar", "XGrammarBackend", "XGrammarGrammar", "check_ebnf"]
