"""Invalid specs fail with ValueError up front and as cached InvalidGrammar, never raising."""

from __future__ import annotations

import threading
import time

import pytest
from pydantic import BaseModel

from sglite_runtime.constrained.base import InvalidGrammar, is_invalid
from sglite_runtime.constrained.grammar_cache import GrammarCache, make_key
from sglite_runtime.constrained.outlines_backend import OutlinesGrammar
from sglite_runtime.constrained.specs import schema_from_pydantic, validate_spec

INVALID_SPECS = [
    ("regex", "[.*"),
    ("regex", "(?=look)ahead"),
    ("regex", r"(a)\1"),
    ("json", '{"type": "object", "properties": {"foo": "bar"}}'),
    ("json", "INVALID"),
    ("json", "[1, 2]"),
    ("json", {"type": "strin"}),
    ("choices", []),
    ("ebnf", "root ::= 'a'"),
]


@pytest.mark.parametrize("kind,spec", INVALID_SPECS)
def test_validate_spec_rejects(kind, spec):
    with pytest.raises(ValueError):
        validate_spec(kind, spec)


def test_validate_spec_accepts():
    validate_spec("regex", "[a-z]+")
    validate_spec("json", {"type": "object", "properties": {"a": {"type": "integer"}}})
    validate_spec("json", '{"type": "string"}')
    validate_spec("choices", ["a", "b"])
    validate_spec("json_object", "")


def test_pydantic_schema(backend):
    class Person(BaseModel):
        name: str
        age: int

    schema = schema_from_pydantic(Person)
    assert schema["required"] == ["name", "age"]
    validate_spec("json", schema)
    assert isinstance(backend.new_grammar(backend.compile(make_key("json", schema))), OutlinesGrammar)


def _wait(cache, future, limit=10.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = cache.poll(future, timeout=0.05)
        if got is not None:
            return got
    raise AssertionError("compile did not finish")


def _get(cache, key):
    """get_or_submit, then wait for the future if there is one (fast compiles may be done)."""
    grammar, future = cache.get_or_submit(key)
    return grammar if future is None else _wait(cache, future)


@pytest.mark.parametrize("kind,spec", INVALID_SPECS)
def test_cache_caches_failures(backend, kind, spec):
    cache = GrammarCache(backend)
    key = make_key(kind, spec)
    grammar = _get(cache, key)
    assert is_invalid(grammar) and grammar.error
    assert cache.get_error(key) == grammar.error
    again, future2 = cache.get_or_submit(key)  # served from the cache, no recompile
    assert future2 is None and is_invalid(again) and cache.hits == 1
    cache.shutdown()


def test_vocabulary_gap_is_a_compile_failure(bpe_tokenizer):
    # Passes validate_spec but cannot be spelled: a character the vocabulary lacks.
    from sglite_runtime.constrained.outlines_backend import OutlinesGrammarBackend

    be = OutlinesGrammarBackend(bpe_tokenizer)
    be.vocabulary.remove(b"q")
    cache = GrammarCache(be)
    assert is_invalid(_get(cache, ("regex", "q+")))


def test_cache_hit_gives_independent_copies(backend):
    cache = GrammarCache(backend)
    key = make_key("regex", "[0-9]{3}")
    first = _get(cache, key)
    second, none = cache.get_or_submit(key)
    assert none is None and isinstance(second, OutlinesGrammar)
    assert first.compiled is second.compiled  # shared automaton
    first.accept_token(first.allowed_token_ids()[0])
    assert first.state != second.state
    cache.shutdown()


def test_lru_eviction(backend):
    cache = GrammarCache(backend, max_entries=2)
    for i in range(4):
        _get(cache, ("regex", f"a{{{i + 1}}}"))
    assert len(cache) == 2
    assert cache.get_error(("regex", "a{1}")) is None and ("regex", "a{1}") not in cache._entries
    cache.shutdown()


def test_compile_timeout_marks_invalid(backend):
    gate = threading.Event()

    class SlowBackend:
        def compile(self, key):
            gate.wait(5)
            return backend.compile(key)

        def new_grammar(self, compiled):
            return backend.new_grammar(compiled)

    cache = GrammarCache(SlowBackend(), compile_timeout_s=0.05)
    _, future = cache.get_or_submit(("regex", "abc"))
    assert cache.poll(future) is None  # still compiling
    time.sleep(0.1)
    got = cache.poll(future)
    assert isinstance(got, InvalidGrammar) and "timed out" in got.error
    gate.set()
    time.sleep(0.05)
    again, fut = cache.get_or_submit(("regex", "abc"))
    assert is_invalid(again) and fut is None
    cache.shutdown()


def test_compiler_crash_is_contained(backend):
    class Boom:
        def compile(self, key):
            raise RuntimeError("compiler bug")

        def new_grammar(self, compiled):  # pragma: no cover
            raise AssertionError

    cache = GrammarCache(Boom())
    got = _get(cache, ("regex", "a"))
    assert is_invalid(got) and "compiler bug" in got.error
    cache.shutdown()
