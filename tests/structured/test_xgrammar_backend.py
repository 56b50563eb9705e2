"""The xgrammar backend, model-free: EBNF, json_object at any depth within a token budget,
copy/rollback, and the JSON closing distance checked against ``json.loads``."""

from __future__ import annotations

import json
import random

import pytest
from transformers import PreTrainedTokenizerFast

from sglite_runtime.constrained.backend_router import RoutedGrammarBackend, validate_constraint
from sglite_runtime.constrained.json_budget import JsonCloser
from structured_helpers import SHIPPED_TOKENIZER


@pytest.fixture(scope="module")
def tok():
    return PreTrainedTokenizerFast(tokenizer_file=SHIPPED_TOKENIZER, eos_token="<|endoftext|>")


@pytest.fixture(scope="module")
def router(tok):
    return RoutedGrammarBackend("outlines", tok)


def depth(value) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def walk(grammar, tok, rng, prefer: str = "") -> list[int]:
    """Sample allowed tokens (preferring those starting with a byte of ``prefer``) to the end."""
    out = []
    first = grammar.compiled.backend.token_bytes
    liked_bytes = prefer.encode()
    while not grammar.is_terminated():
        allowed = grammar.allowed_token_ids()
        assert allowed, "a live state must allow some token"
        liked = [t for t in allowed if first[t] and first[t][0] in liked_bytes] if prefer else []
        t = rng.choice(liked if liked and rng.random() < 0.7 else allowed)
        assert grammar.accept_token(t)
        out.append(t)
    return out


def test_json_object_any_depth_closes_within_budget(router, tok):
    compiled = router.compile(("json_object", ""))
    rng = random.Random(0)
    deepest = 0
    for budget in (2, 3, 4, 7, 12, 25, 60):
        for _ in range(15):
            g = router.new_grammar(compiled)
            g.set_token_budget(budget)
            assert g.min_tokens_to_accept() == 2  # "{}"
            ids = walk(g, tok, rng, prefer='{["')
            assert len(ids) <= budget
            text = tok.decode([t for t in ids if t != tok.eos_token_id])
            value = json.loads(text)
            assert isinstance(value, dict), text
            deepest = max(deepest, depth(value))
    assert deepest >= 3  # nesting beyond the old outlines depth-1 regex (depth 2)


def test_closer_distance_is_exact(router, tok):
    """Appending the canonical bytes completes the prefix in exactly ``distance()`` bytes."""
    compiled = router.compile(("json_object", ""))
    rng = random.Random(1)
    checked = 0
    for _ in range(20):
        g = router.new_grammar(compiled)
        ids = walk(g, tok, rng, prefer='{["\\')
        data = b"".join(router.cfg.token_bytes[t] or b"" for t in ids)
        for cut in range(len(data) + 1):
            closer = JsonCloser()
            closer.feed(data[:cut])
            need, tail = closer.distance(), b""
            while (b := closer.canonical_byte()) is not None:
                tail += bytes([b])
                closer.feed(bytes([b]))
            assert len(tail) == need
            json.loads(data[:cut] + tail)
            checked += 1
    assert checked > 100


def test_ebnf_copy_rollback(router, tok):
    g = router.new_grammar(router.compile(("ebnf", 'root ::= "(" [0-9]+ ")" | "x"')))
    ids = tok.encode("(12)")
    for t in ids:
        assert g.accept_token(t)
    assert g.is_accepting()
    dup = g.copy()
    g.rollback(len(ids))
    assert not g.is_accepting() and dup.is_accepting()
    assert set(tok.decode([t]) for t in g.allowed_token_ids()) >= {"(", "x"}
    assert not g.accept_token(tok.encode(")")[0])


def test_validation_messages():
    validate_constraint("ebnf", 'root ::= "a" | "b"')
    for bad, word in (("root ::= nope", "not defined"), ('root ::= "a', "string"), ('start ::= "a"', "root")):
        with pytest.raises(ValueError, match=word):
            validate_constraint("ebnf", bad)
    with pytest.raises(ValueError):
        validate_constraint("ebnf", 42)


def test_xgrammar_backend_for_every_kind(tok):
    router = RoutedGrammarBackend("xgrammar", tok)
    rng = random.Random(2)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    for key, check in ((("json", json.dumps(schema)), lambda s: isinstance(json.loads(s)["n"], int)),
                       (("regex", "[a-c]{2}[0-9]"), lambda s: len(s) == 3),
                       (("choices", json.dumps(["red", "blue"])), lambda s: s in ("red", "blue"))):
        compiled = router.compile(key)
        assert type(compiled).__name__ == "CompiledXGrammar"
        for _ in range(5):
            g = router.new_grammar(compiled)
            ids = walk(g, tok, rng)
            text = tok.decode([t for t in ids if t != tok.eos_token_id])
            if g.is_accepting():
                assert check(text), text
    with pytest.raises(ValueError):
        RoutedGrammarBackend("llguidance", tok)


@pytest.mark.parametrize("kind", ["json", "json_object", "ebnf"])
def test_think_first_grammar(router, tok, kind):
    """require_reasoning: free thinking, then the grammar; within budget, with rollbacks."""
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}}, "required": ["a"]}
    spec = {"json": json.dumps(schema), "json_object": "", "ebnf": 'root ::= "yes" | "no" | "maybe so"'}[kind]
    compiled = router.compile((kind, spec))
    rng = random.Random(3)
    for budget in (12, 20, 40):
        for _ in range(4):
            g = router.think_first(router.new_grammar(compiled))
            g.set_token_budget(budget)
            assert (g.min_tokens_to_accept() or 0) <= budget
            ids: list[int] = []
            while not g.is_terminated():
                t = rng.choice(g.allowed_token_ids())
                assert t not in router.cfg.stop_ids or g.done_thinking  # no stop while thinking
                assert g.accept_token(t)
                ids.append(t)
                if rng.random() < 0.1:
                    g.rollback(1)
                    ids.pop()
            assert len(ids) <= budget
            text = tok.decode([t for t in ids if t != tok.eos_token_id])
            thinking, answer = text.split("</think>", 1)
            assert "</think>" not in answer
            if kind == "ebnf":  # best effort (estimated distance), closes here
                assert answer in ("yes", "no", "maybe so"), answer
                continue
            value = json.loads(answer)
            assert kind == "json_object" or value["a"] in range(10)


EBNF_BUDGET_SUITE = {
    "arith": ('root ::= expr\nexpr ::= term (("+" | "-") term)*\nterm ::= factor (("*" | "/") factor)*\n'
              'factor ::= [0-9]+ | "(" expr ")"'),
    "sql": ('root ::= "SELECT " cols " FROM " ident (" WHERE " ident " = " [0-9]+)? ";"\n'
            'cols ::= "*" | ident (", " ident)*\nident ::= [a-z_] [a-z0-9_]*'),
    "sexpr": 'root ::= sexpr\nsexpr ::= atom | "(" sexpr (" " sexpr)* ")"\natom ::= [a-z]+ | [0-9]+',
}


@pytest.mark.parametrize("name", sorted(EBNF_BUDGET_SUITE))
def test_ebnf_closes_within_budget_best_effort(router, tok, name):
    """A searched completion plan closes random walks (an adversarial "model") in budget."""
    compiled = router.compile(("ebnf", EBNF_BUDGET_SUITE[name]))
    rng = random.Random(4)
    for budget in (16, 24, 48):
        for _ in range(6):
            g = router.new_grammar(compiled)
            g.set_token_budget(budget)
            assert g.min_tokens_to_accept() is None  # no exact distance: no 400 up front
            ids = []
            while not g.is_terminated() and len(ids) < budget:
                t = rng.choice(g.allowed_token_ids())
                assert g.accept_token(t)
                ids.append(t)
            assert g.is_accepting(), (budget, tok.decode(ids))
