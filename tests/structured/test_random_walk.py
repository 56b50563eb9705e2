"""Model-free validity: random walks through the mask always spell a matching string."""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest
from grammar_suite import REGEX_SUITE, SCHEMA_SUITE
from structured_helpers import distances_to_accept, random_walk

WALKS_PER_SPEC = 6


def _walks(backend, key, seed):
    grammar0 = backend.new_grammar(backend.compile(key))
    dist = distances_to_accept(grammar0)
    rng = random.Random(seed)
    for n in range(WALKS_PER_SPEC):
        grammar = grammar0.copy()
        data, _, finished = random_walk(grammar, rng, free_steps=5 + 10 * n, dist=dist)
        assert finished, f"walk did not finish: {data[:200]!r}"
        yield data.decode("utf-8")


def test_suites_are_large_enough():
    assert len(REGEX_SUITE) >= 30 and len(SCHEMA_SUITE) >= 20
    for schema in SCHEMA_SUITE:
        jsonschema.Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("pattern", REGEX_SUITE)
def test_regex_walks_fullmatch(backend, pattern):
    for text in _walks(backend, ("regex", pattern), seed=hash(pattern) & 0xFFFF):
        assert re.fullmatch(pattern, text), (pattern, text)


@pytest.mark.parametrize("schema", SCHEMA_SUITE, ids=[str(i) for i in range(len(SCHEMA_SUITE))])
def test_schema_walks_validate(backend, schema):
    for text in _walks(backend, ("json", json.dumps(schema)), seed=len(json.dumps(schema))):
        jsonschema.validate(json.loads(text), schema)


def test_json_object_mode(backend):
    for text in _walks(backend, ("json_object", ""), seed=7):
        assert isinstance(json.loads(text), dict), text


def test_choices(backend):
    choices = ["yes", "no", "y(es)?", "a.b [x]", "naïve"]
    seen = set()
    for text in _walks(backend, ("choices", choices), seed=3):
        assert text in choices
        seen.add(text)
    assert len(seen) >= 2


def test_shipped_tokenizer_walks(shipped_tokenizer):
    from sglite_runtime.constrained.outlines_backend import OutlinesGrammarBackend

    backend = OutlinesGrammarBackend(shipped_tokenizer)
    for schema in SCHEMA_SUITE[12:16]:
        for text in _walks(backend, ("json", json.dumps(schema)), seed=1):
            jsonschema.validate(json.loads(text), schema)


@pytest.mark.parametrize("fmt", ["date", "uri"])
def test_formats_use_ascii_digits(backend, fmt):
    # outlines-core writes these formats with \d, which would allow e.g. "꧓" as a digit.
    schema = {"type": "string", "format": fmt}
    assert "\\d" not in backend.to_regex("json", schema)
    for text in _walks(backend, ("json", json.dumps(schema)), seed=2):
        value = json.loads(text)
        assert all(not ch.isdigit() or ch in "0123456789" for ch in value), value
