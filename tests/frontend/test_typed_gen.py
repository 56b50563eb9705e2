"""Typed gens are always valid literals: gen_string / dtype=str a JSON string, int inside int64,
float finite, bool True/False; a JSON object assembled from typed gens in a var_scope parses.

The patterns are checked against ``re``/``json`` directly (cheap); then the shipped model
samples many seeded programs, interpreted and compiled, with budgets large and tiny
(a budget that ends a string early must still leave a closed literal).
"""
from __future__ import annotations

import json
import os
import re

import pytest

import sglite
from sglite.lang import ir
from sglite.protocol.sampling import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR, typed_completion

INT64 = (-(2 ** 63), 2 ** 63 - 1)


def test_patterns_accept_only_valid_literals():
    assert ir.REGEX_INT == REGEX_INT and ir.REGEX_STR == REGEX_STR  # SGLang's import path
    for good in ['""', '"a b"', '"tab\\tquote\\"slash\\\\"', '"\\u00e9"', '"caf\u00e9"']:
        assert re.fullmatch(REGEX_STR, good) and isinstance(json.loads(good), str), good
    for bad in ['"a\nb"', '"a\tb"', '"a\x00"', '"a\\x"', '"a"b"', 'abc']:
        assert not re.fullmatch(REGEX_STR, bad), bad
    assert re.fullmatch(REGEX_INT, "-" + "9" * 18) and not re.fullmatch(REGEX_INT, "1" * 19)
    assert not re.fullmatch(REGEX_INT, "01") and not re.fullmatch(REGEX_INT, "1 ")
    assert re.fullmatch(REGEX_FLOAT, "-0.125") and not re.fullmatch(REGEX_FLOAT, "1.")
    assert re.fullmatch(REGEX_BOOL, "True") and not re.fullmatch(REGEX_BOOL, "true")


@pytest.mark.parametrize("dtype,regex", [("str", REGEX_STR), ("int", REGEX_INT), ("float", REGEX_FLOAT),
                                         ("bool", REGEX_BOOL)])
def test_every_cut_prefix_is_closed_into_a_valid_literal(dtype, regex):
    samples = {"str": ['"plain"', '"esc \\\\ \\" \\n \\u00e9 end"', '"\\u12ab"'],
               "int": ["-123456789012345678", "0", "7"], "float": ["-12.5", "0.0625", "3"],
               "bool": ["True", "False"]}[dtype]
    for full in samples:
        for cut in range(len(full) + 1):
            prefix = full[:cut]
            closed = prefix + typed_completion(dtype, prefix)
            assert closed.startswith(prefix) and re.fullmatch(regex, closed), (prefix, closed)
            if dtype != "bool":
                json.loads(closed)
    assert typed_completion("str", '"done"') == "" and typed_completion(None, '"open') == ""


@sglite.function
def record(s, k, budget):
    s += "A record about a person, as JSON.\n"
    with s.var_scope("json"):
        s += '{"name": ' + sglite.gen_string("name", max_tokens=budget, temperature=1.2) + ", "
        s += '"age": ' + sglite.gen_int("age", temperature=1.2) + ", "
        s += '"id": ' + sglite.gen("id", dtype=int, seed=k, temperature=1.5) + ", "
        s += '"city": ' + sglite.gen("city", dtype=str, seed=k, max_tokens=budget, temperature=1.5) + ", "
        s += '"score": ' + sglite.gen("score", dtype=float, seed=k, temperature=1.5) + ", "
        s += '"ok": ' + sglite.select("ok", choices=["true", "false"]) + "}"
    s += sglite.gen("flag", dtype=bool, seed=k, temperature=1.5)


def _check(state) -> None:
    obj = json.loads(state["json"])
    assert set(obj) == {"name", "age", "id", "city", "score", "ok"}
    assert isinstance(obj["name"], str) and isinstance(obj["city"], str)
    for key in ("age", "id"):
        assert isinstance(obj[key], int) and INT64[0] <= obj[key] <= INT64[1]
    assert isinstance(obj["score"], (int, float)) and abs(obj["score"]) < float("inf")
    assert state["flag"] in ("True", "False")
    assert json.loads(state["name"]) == obj["name"] and json.loads(state["city"]) == obj["city"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(os.path.join(os.path.dirname(sglite.__file__), "..", "sglite_runtime",
                                                    "assets", "sglite-tiny", "model.safetensors")),
                    reason="shipped model weights are not built")
def test_json_from_typed_gens_always_parses(engine_backend):
    batch = [{"k": seed, "budget": (3 if seed % 3 == 0 else 24)} for seed in range(24)]
    states = record.run_batch(batch, backend=engine_backend, max_new_tokens=24)
    for st in states:
        _check(st)
    # Compiled: the same graph runs in the runtime's program executor.
    compiled = record.run_batch(batch[:6], backend=engine_backend, max_new_tokens=24, compile=True)
    for st in compiled:
        _check(st)
    # Streaming: closing text of a cut string is streamed too.
    st = record.run(k=99, budget=3, backend=engine_backend, max_new_tokens=24, stream=True)
    streamed = "".join(st.text_iter("city"))
    assert streamed == st["city"] and json.loads(streamed) == json.loads(st["json"])["city"]
