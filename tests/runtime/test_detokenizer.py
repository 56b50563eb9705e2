"""Incremental detokenization: UTF-8 safe, equal to a one-shot decode, stop strings trimmed."""

from __future__ import annotations

import pytest

from sglite_runtime.managers.detokenizer_manager import DetokenizerManager
from sglite_runtime.managers.io_struct import BatchTokenIDOut, FinishLength, FinishStop


@pytest.fixture(scope="module")
def tokenizer(shipped_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shipped_model_path)


def _msg(rid, ids, reason=None, no_stop_trim=False):
    return BatchTokenIDOut([rid], [ids], [reason], [1], [0], [0], [True], [no_stop_trim], [None], [None], [None], [None])


@pytest.mark.parametrize("text", ["plain ascii words", "naïve café — ünïcödé", "emoji 🙂🚀 and 中文字符", '{"k": [1, 2]}'])
def test_token_by_token_equals_one_shot_and_never_emits_partial_chars(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    d = DetokenizerManager(tokenizer)
    seen = []
    for i, t in enumerate(ids):
        last = i == len(ids) - 1
        out = d.handle_batch_token_id_out(_msg("r", [t], FinishLength(length=len(ids)) if last else None))
        seen.append(out.texts[0])
    assert all("\ufffd" not in s for s in seen)  # multi-byte characters are held back, not mangled
    assert all(b.startswith(a) for a, b in zip(seen, seen[1:]))  # cumulative text only grows
    assert seen[-1] == tokenizer.decode(ids) == text
    assert d.states == {}  # state is dropped at finish


def test_stop_string_trimmed_unless_no_stop_trim(tokenizer):
    ids = tokenizer.encode("answer: 42\nnext line", add_special_tokens=False)
    reason = FinishStop(matched="\n")
    assert DetokenizerManager(tokenizer).handle_batch_token_id_out(_msg("a", ids, reason)).texts[0] == "answer: 42"
    kept = DetokenizerManager(tokenizer).handle_batch_token_id_out(_msg("b", ids, reason, no_stop_trim=True))
    assert kept.texts[0] == "answer: 42\nnext line"


def test_stop_token_is_not_part_of_the_text(tokenizer):
    ids = tokenizer.encode("done", add_special_tokens=False) + tokenizer.encode(" x", add_special_tokens=False)
    out = DetokenizerManager(tokenizer).handle_batch_token_id_out(_msg("c", ids, FinishStop(matched=ids[-1])))
    assert out.texts[0] == tokenizer.decode(ids[:-1])
