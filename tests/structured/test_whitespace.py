"""JSON whitespace that cannot run away (issue 14 item 2).

By default a schema's JSON allows at most one space between tokens, so no walk can loop
on whitespace; ``--constrained-json-whitespace-pattern`` restores an unbounded pattern.
Checked by spelling texts byte by byte through the grammar (accepted or not), and
against ``json.loads`` for the texts the grammar accepts.
"""

from __future__ import annotations

import json
import random

import pytest

from sglite_runtime.constrained.grammar_cache import make_key
from sglite_runtime.constrained.outlines_backend import OutlinesGrammarBackend
from sglite_runtime.server_args import ServerArgs

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "array", "items": {"type": "boolean"}}},
          "required": ["a", "b"]}
COMPACT = '{"a": 1, "b": [true, false]}'
PADDED = '{\n  "a": 1,\n  "b": [\n    true,\n    false\n  ]\n}'
OLD_PATTERN = r"[\n\t ]*"


def _spells(backend, text: str) -> bool:
    """True when the grammar accepts ``text`` completely, one byte-token at a time."""
    grammar = backend.new_grammar(backend.compile(make_key("json", SCHEMA)))
    for byte in text.encode():
        if not grammar.accept_token(backend.single_byte_token[byte]):
            return False
    return grammar.is_accepting()


def test_default_whitespace_is_bounded(bpe_tokenizer):
    backend = OutlinesGrammarBackend(bpe_tokenizer)
    assert _spells(backend, COMPACT) and _spells(backend, COMPACT.replace(" ", ""))
    assert not _spells(backend, PADDED)
    assert not _spells(backend, COMPACT.replace(": ", ":  "))
    # A random walk through the mask never writes more than two whitespace bytes in a row
    # (an empty array is "[ws ws]").
    grammar0 = backend.new_grammar(backend.compile(make_key("json", SCHEMA)))
    rng = random.Random(0)
    for _ in range(20):
        grammar, out = grammar0.copy(), bytearray()
        grammar.set_token_budget(60)
        while not grammar.is_terminated():
            tid = rng.choice(grammar.allowed_token_ids())
            assert grammar.accept_token(tid)
            if grammar.compiled.is_stop(tid):
                break
            out += grammar.compiled.token_bytes[tid]
        text = out.decode()
        assert "   " not in text and "\n" not in text, text
        json.loads(text)


def test_flag_restores_unbounded_whitespace(bpe_tokenizer):
    backend = OutlinesGrammarBackend(bpe_tokenizer, whitespace_pattern=OLD_PATTERN)
    assert _spells(backend, PADDED) and _spells(backend, COMPACT)


def test_server_flag_reaches_the_backend(shipped_model_path):
    from scheduler_utils import make_scheduler

    s = make_scheduler(shipped_model_path, constrained_json_whitespace_pattern=OLD_PATTERN)
    assert s.grammar_manager.backend.outlines.whitespace_pattern == OLD_PATTERN
    with pytest.raises(ValueError, match="constrained_json_whitespace_pattern"):
        ServerArgs(constrained_json_whitespace_pattern="[")
