"""Jump-forward: forced continuations are legal, and equal what any walk must produce."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest
from grammar_suite import REGEX_SUITE, SCHEMA_SUITE
from structured_helpers import distances_to_accept

from sglite_runtime.constrained.jump_forward import jump_forward_str, jump_forward_tokens


def test_literal_prefix_is_forced(backend, bpe_tokenizer):
    grammar = backend.new_grammar(backend.compile(("regex", r"The answer is [0-9]+\.")))
    data, state = jump_forward_str(grammar)
    assert data == b"The answer is "
    ids = jump_forward_tokens(grammar, bpe_tokenizer)
    assert b"".join(backend.token_bytes[t] for t in ids) == data
    assert grammar.state == grammar.compiled.initial_state  # not advanced
    assert grammar.accept_tokens(ids) == len(ids) and grammar.state == state


def test_schema_keys_are_forced(backend, bpe_tokenizer):
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    grammar = backend.new_grammar(backend.compile(("json", json.dumps(schema))))
    assert jump_forward_str(grammar)[0] == b"{"
    grammar.accept_tokens(jump_forward_tokens(grammar, bpe_tokenizer))
    # After "{" the grammar allows an optional space, so nothing is forced...
    assert jump_forward_str(grammar) is None
    quote = next(t for t in grammar.allowed_token_ids() if backend.token_bytes[t] == b'"')
    grammar.accept_token(quote)
    # ...but after the opening quote the key and the colon are.
    assert jump_forward_str(grammar)[0] == b'name"'


def test_nothing_forced_in_accepting_states(backend):
    grammar = backend.new_grammar(backend.compile(("regex", "ab(cd)?")))
    a_b = jump_forward_tokens(grammar)
    grammar.accept_tokens(a_b)
    assert grammar.is_accepting() and jump_forward_str(grammar) is None


def test_utf8_boundary(backend, bpe_tokenizer):
    grammar = backend.new_grammar(backend.compile(("regex", "caf(é|e)")))
    assert jump_forward_str(grammar)[0] == b"caf"
    grammar = backend.new_grammar(backend.compile(("regex", "日本(語|読)")))
    data, _ = jump_forward_str(grammar)
    assert data.startswith("日本".encode())
    # "語" and "読" share two of their three UTF-8 bytes: forced, but left unspelled.
    assert len(data) == 8
    ids = jump_forward_tokens(grammar, bpe_tokenizer)
    assert b"".join(backend.token_bytes[t] for t in ids) == "日本".encode()


def _check_jumps_during_walks(backend, tokenizer, key, validate, seed):
    """At every step of random walks: the forced bytes are a prefix of whatever the walk
    still produces; and walks that take the jump tokens end valid."""
    base = backend.new_grammar(backend.compile(key))
    dist = distances_to_accept(base)
    rng = random.Random(seed)
    for trial in range(4):
        grammar = base.copy()
        text = bytearray()
        pending: list[tuple[int, bytes]] = []  # (offset, forced bytes) to check at the end
        for _ in range(300):
            if grammar.is_terminated():
                break
            forced = jump_forward_str(grammar)
            if forced is not None:
                pending.append((len(text), forced[0]))
                if trial % 2 == 0:  # half the walks take the jump
                    ids = jump_forward_tokens(grammar, tokenizer)
                    assert grammar.accept_tokens(ids) == len(ids)
                    text += b"".join(backend.token_bytes[t] for t in ids)
                    continue
            tid = rng.choice(grammar.allowed_token_ids()) if len(text) < 60 else None
            if tid is None:
                here = dist.get(grammar.state, 10**9)
                ok = [t for t in grammar.allowed_token_ids() if grammar.compiled.is_stop(t)
                      or dist.get(grammar.compiled.next_state(grammar.state, t), 10**9) < here]
                tid = rng.choice(ok)
            assert grammar.accept_token(tid)
            if grammar.compiled.is_stop(tid):
                break
            text += backend.token_bytes[tid]
        assert grammar.is_terminated()
        for offset, forced in pending:
            assert bytes(text[offset:offset + len(forced)]) == forced
        validate(bytes(text).decode("utf-8"))


@pytest.mark.parametrize("pattern", REGEX_SUITE[::3])
def test_jump_forward_regex(backend, bpe_tokenizer, pattern):
    _check_jumps_during_walks(backend, bpe_tokenizer, ("regex", pattern),
                              lambda s: re.fullmatch(pattern, s) or pytest.fail(f"{pattern!r} {s!r}"), 11)


@pytest.mark.parametrize("idx", range(0, len(SCHEMA_SUITE), 2))
def test_jump_forward_schema(backend, bpe_tokenizer, idx):
    schema = SCHEMA_SUITE[idx]
    _check_jumps_during_walks(backend, bpe_tokenizer, ("json", json.dumps(schema)),
                              lambda s: jsonschema.validate(json.loads(s), schema), idx)


def test_jump_forward_sentencepiece(sp_tokenizer):
    from sglite_runtime.constrained.outlines_backend import OutlinesGrammarBackend

    be = OutlinesGrammarBackend(sp_tokenizer, eos_token_ids=sp_tokenizer.token_to_id("</s>"))
    schema = SCHEMA_SUITE[12]
    _check_jumps_during_walks(be, sp_tokenizer, ("json", json.dumps(schema)),
                              lambda s: jsonschema.validate(json.loads(s), schema), 5)
