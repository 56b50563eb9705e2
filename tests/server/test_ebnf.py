"""Context-free constraints over HTTP: SGLang's ``ebnf`` sampling parameter and
``response_format: json_object`` nested to any depth (xgrammar behind ``--grammar-backend``).

Every output is checked by an independent reference (a recursive-descent parser written
here, ``json.loads``), never by the engine that produced it.
"""

from __future__ import annotations

import json
import re

import httpx
import openai
import pytest

# Arithmetic with nested parentheses: no regex can express it.
ARITH = r'''root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= [0-9]{1,3} | "(" expr ")"'''
YES_NO = 'root ::= "yes" | "no"'


def parse_arith(text: str) -> bool:
    """True when ``text`` is a sentence of ARITH (reference recursive-descent parser)."""
    toks = re.findall(r"[0-9]+|[-+*/()]|.", text)
    pos = 0

    def factor() -> bool:
        nonlocal pos
        if pos < len(toks) and re.fullmatch(r"[0-9]{1,3}", toks[pos]):
            pos += 1
            return True
        if pos < len(toks) and toks[pos] == "(":
            pos += 1
            if not expr() or pos >= len(toks) or toks[pos] != ")":
                return False
            pos += 1
            return True
        return False

    def chain(sub, ops: str) -> bool:
        nonlocal pos
        if not sub():
            return False
        while pos < len(toks) and toks[pos] in ops:
            pos += 1
            if not sub():
                return False
        return True

    def term() -> bool:
        return chain(factor, "*/")

    def expr() -> bool:
        return chain(term, "+-")

    return expr() and pos == len(toks)


def generate(server, text: str, **sampling) -> httpx.Response:
    body = {"text": text, "sampling_params": {"max_new_tokens": 48, "temperature": 0, **sampling}}
    return httpx.post(server.url + "/generate", json=body, timeout=120)


def test_reference_parser_rejects():
    assert parse_arith("1+(2*3)") and not parse_arith("1+(2*3") and not parse_arith("1234")


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_generate_ebnf(server, temperature):
    for seed in range(3 if temperature else 1):
        r = generate(server, "Compute:", ebnf=ARITH, temperature=temperature, seed=seed)
        assert r.status_code == 200, r.text
        out = r.json()
        if out["meta_info"]["finish_reason"]["type"] == "stop":
            assert parse_arith(out["text"]), out["text"]
    r = generate(server, "Answer:", ebnf=YES_NO)
    assert r.status_code == 200 and r.json()["text"] in ("yes", "no"), r.text
    assert r.json()["meta_info"]["finish_reason"]["type"] == "stop"


def test_invalid_ebnf_is_400(server):
    for bad in ('root ::= missing_rule', 'root ::= "unterminated', 'start ::= "a"'):
        r = generate(server, "x", ebnf=bad)
        assert r.status_code == 400, r.text
        assert "ebnf" in r.json()["error"]["message"].lower(), r.text
    r = generate(server, "x", ebnf=YES_NO, regex="a")
    assert r.status_code == 400 and "only one of" in r.text.lower()
    assert generate(server, "Answer:", ebnf=YES_NO).status_code == 200  # still serving


def test_json_object_any_depth_and_budget(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    deep = '{"a": {"b": {"c": [1, {"d": [true]}]}}}'  # depth itself: tests/structured/test_xgrammar_backend.py
    for max_tokens in (2, 3, 5, 8, 13, 40):
        for temperature in (0.0, 1.0):
            resp = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": "Give me nested JSON like " + deep}],
                response_format={"type": "json_object"}, max_tokens=max_tokens, temperature=temperature, seed=1)
            choice = resp.choices[0]
            value = json.loads(choice.message.content)  # always complete within the budget
            assert isinstance(value, dict)
            assert choice.finish_reason == "stop", (max_tokens, choice.message.content)
            assert resp.usage.completion_tokens <= max_tokens


def test_frontend_gen_ebnf(server):
    import sglite as sgl

    @sgl.function
    def prog(s):
        s += "Answer: " + sgl.gen("a", max_tokens=8, ebnf=YES_NO, temperature=0)

    backend = sgl.RuntimeEndpoint(server.url)
    for compile_ in (False, True):  # interpreted, and as a compiled graph run by the server
        state = prog.run(backend=backend, compile=compile_)
        assert state["a"] in ("yes", "no"), (compile_, state["a"])


def test_v1_constraint_fields(server):
    """SGLang's ebnf and vLLM's guided_* names on /v1; two constraints at once are a 400."""
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    checks = [({"ebnf": YES_NO}, lambda t: t in ("yes", "no")),
              ({"guided_grammar": ARITH}, parse_arith),
              ({"guided_regex": "[a-c]{3}"}, lambda t: re.fullmatch("[a-c]{3}", t)),
              ({"guided_choice": ["red", "blue"]}, lambda t: t in ("red", "blue")),
              ({"guided_json": {"type": "object", "properties": {"k": {"type": "boolean"}}, "required": ["k"]}},
               lambda t: isinstance(json.loads(t)["k"], bool))]
    for extra, ok in checks:
        r = client.completions.create(model=model, prompt="Answer:", max_tokens=32, temperature=0, extra_body=extra)
        assert r.choices[0].finish_reason == "stop" and ok(r.choices[0].text), (extra, r.choices[0].text)
    with pytest.raises(openai.BadRequestError, match="Only one constraint"):
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "x"}], max_tokens=8,
                                       extra_body={"guided_regex": "a", "ebnf": YES_NO})
