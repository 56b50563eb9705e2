"""Complete within budget, model-free: a uniformly random walk through the budget-aware
mask always ends in a full match within ``max_new_tokens``, for every budget from the
grammar's minimum upward.

A random walk is the hardest "model": it never heads for the exit on its own, so every
output that closes in time was closed by the budget mask.  Outputs are checked with
``re.fullmatch`` / ``jsonschema``, the references, not with the grammar itself.
"""

from __future__ import annotations

import json
import random
import re

import jsonschema
import numpy as np
import pytest
from grammar_suite import REGEX_SUITE, SCHEMA_SUITE
from structured_helpers import distances_to_accept

from sglite_runtime.constrained.grammar_cache import make_key
from sglite_runtime.managers.grammar_manager import apply_token_budget, within_budget

BUDGET_OFFSETS = (0, 1, 3, 12)


def _mask_ids(backend, grammar) -> list[int]:
    mask = backend.allocate_vocab_mask(backend.vocab_size, 2, "cpu")
    grammar.fill_vocab_mask(mask, 1)
    bits = np.unpackbits(mask[1].numpy().view(np.uint8), bitorder="little")[: backend.vocab_size]
    return np.flatnonzero(bits).tolist()


def _walk(backend, grammar, budget: int, rng: random.Random, check_mask: bool) -> tuple[str, int]:
    """Random allowed tokens until the grammar terminates; returns (text, tokens used)."""
    grammar.set_token_budget(budget)
    compiled = grammar.compiled
    out, used = bytearray(), 0
    while not grammar.is_terminated():
        allowed = grammar.allowed_token_ids()
        if check_mask:
            assert sorted(allowed) == _mask_ids(backend, grammar)
        assert allowed and used < budget, f"budget {budget} exhausted in a non-accepting state: {bytes(out)!r}"
        tid = rng.choice(allowed)
        assert grammar.accept_token(tid)
        used += 1
        if compiled.is_stop(tid):
            break
        out += compiled.token_bytes[tid]
    assert grammar.is_accepting()
    return out.decode("utf-8"), used


def _check_all_budgets(backend, key, check, seed: int) -> None:
    grammar0 = backend.new_grammar(backend.compile(key))
    minimum = grammar0.min_tokens_to_accept()
    reference = distances_to_accept(grammar0)  # over Index.get_transitions(), every edge
    assert minimum == reference[grammar0.state]
    # Same distances on every state reachable from the start (the reference also holds
    # states with no incoming edge, which a walk from the start never meets).
    assert grammar0.compiled.distances == {s: reference[s] for s in grammar0.compiled.distances}
    rng = random.Random(seed)
    for extra in BUDGET_OFFSETS:
        for n in range(3):
            text, used = _walk(backend, grammar0.copy(), minimum + extra, rng, check_mask=n == 0)
            assert used <= minimum + extra
            check(text)


@pytest.mark.parametrize("pattern", REGEX_SUITE)
def test_regex_closes_within_every_budget(backend, pattern):
    def check(text):
        assert re.fullmatch(pattern, text), (pattern, text)

    _check_all_budgets(backend, ("regex", pattern), check, seed=len(pattern))


@pytest.mark.parametrize("schema", SCHEMA_SUITE, ids=[str(i) for i in range(len(SCHEMA_SUITE))])
def test_schema_closes_within_every_budget(backend, schema):
    _check_all_budgets(backend, make_key("json", schema), lambda t: jsonschema.validate(json.loads(t), schema),
                       seed=len(json.dumps(schema)))


def test_budget_survives_copy_and_rollback(backend):
    grammar = backend.new_grammar(backend.compile(("regex", r"[a-z]{2,40}")))
    grammar.set_token_budget(10)
    first = grammar.allowed_token_ids()[0]
    assert grammar.accept_token(first) and grammar.remaining_tokens() == 9
    dup = grammar.copy()
    assert dup.remaining_tokens() == 9
    grammar.rollback(1)
    assert grammar.remaining_tokens() == 10 and dup.remaining_tokens() == 9
    grammar.set_token_budget(None)
    assert grammar.remaining_tokens() is None


def test_too_small_budget_names_the_minimum(backend):
    grammar = backend.new_grammar(backend.compile(("regex", r"abc[0-9]{30}")))
    need = grammar.min_tokens_to_accept()
    assert need >= 10
    msg = apply_token_budget(grammar, need - 1)
    assert msg is not None and f"at least {need}" in msg and f"max_new_tokens={need - 1}" in msg
    assert apply_token_budget(backend.new_grammar(grammar.compiled), need) is None


def test_forced_string_is_cut_to_the_budget(backend):
    grammar = backend.new_grammar(backend.compile(("regex", r"(abcdefgh|x)")))
    grammar.set_token_budget(1)
    spelled = [backend.single_byte_token[b] for b in b"abcdefgh"]
    # One token left: only "x" can close; the eight-token spelling must be refused.
    assert within_budget(grammar, spelled) == []
    grammar.set_token_budget(None)
    assert within_budget(grammar, spelled) == spelled


def test_terminates_when_only_a_stop_fits(backend):
    # After "a" the match is complete and twelve digits do not fit in one token: the grammar ends
    # itself, rather than leave a stop-only row that a sampler masking EOS (min_new_tokens)
    # would turn into a row with nothing allowed.
    grammar = backend.new_grammar(backend.compile(("regex", r"a([0-9]{12})?")))
    grammar.set_token_budget(2)
    assert grammar.accept_token(backend.single_byte_token[ord("a")])
    assert grammar.is_terminated() and grammar.is_accepting()
    unlimited = backend.new_grammar(grammar.compiled)
    assert unlimited.accept_token(backend.single_byte_token[ord("a")]) and not unlimited.is_terminated()
