"""Structured generation over HTTP: native /generate and OpenAI ``response_format``.

Outputs are validated (``re.fullmatch``, ``json.loads`` + ``jsonschema``, pydantic); a bad
regex or schema is a 400 with a message, and the server keeps serving afterwards.
"""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

DATE = r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
# Bounded everywhere, so a greedy tiny model finishes well within max_tokens.
MAX_TOKENS = 128


class City(BaseModel):
    name: str = Field(max_length=16)
    population: int = Field(ge=0, le=10_000_000)
    capital: bool


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def generate(server, text: str, **sampling) -> httpx.Response:
    body = {"text": text, "sampling_params": {"max_new_tokens": MAX_TOKENS, "temperature": 0, **sampling}}
    return httpx.post(server.url + "/generate", json=body, timeout=60)


# ---- native /generate ----------------------------------------------------------------------------
def test_generate_regex(server):
    r = generate(server, "Today's date is", regex=DATE)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["meta_info"]["finish_reason"]["type"] == "stop"
    assert re.fullmatch(DATE, out["text"]), out["text"]


def test_generate_json_schema_batch(server):
    body = {"text": ["Give me a JSON record.", "A person:"],
            "sampling_params": {"max_new_tokens": MAX_TOKENS, "temperature": 0, "json_schema": json.dumps(PERSON)}}
    outs = httpx.post(server.url + "/generate", json=body, timeout=60).json()
    for out in outs:
        assert out["meta_info"]["finish_reason"]["type"] == "stop", out
        jsonschema.validate(json.loads(out["text"]), PERSON)


def test_generate_choices(server):
    choices = ["red", "green", "blue"]
    r = generate(server, "My favourite colour is", choices=choices, temperature=1.0, seed=3)
    assert r.status_code == 200, r.text
    assert r.json()["text"] in choices


@pytest.mark.parametrize("bad", [
    {"regex": "[.*"},
    {"json_schema": json.dumps({"type": "object", "properties": {"foo": "bar"}})},
    {"json_schema": "INVALID"},
], ids=["regex", "schema", "not-json"])
def test_generate_invalid_grammar_is_400(server, wait_clean, bad):
    r = generate(server, "hello", **bad)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]["message"]
    assert msg.startswith("Invalid") and len(msg) > len("Invalid regex: "), msg
    # ...and the server keeps serving, constrained and plain requests alike.
    ok = generate(server, "Today's date is", regex=DATE)
    assert ok.status_code == 200 and re.fullmatch(DATE, ok.json()["text"])
    assert generate(server, "The list", max_new_tokens=4).status_code == 200
    s = wait_clean(server.url)
    assert s["num_running_reqs"] == 0 and s["kv_pool"]["protected"] == 0


# ---- OpenAI response_format ----------------------------------------------------------------------
def chat(client, model, content: str, **kw):
    kw = {"max_tokens": MAX_TOKENS, "temperature": 0} | kw
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": content}], **kw)


def test_openai_json_schema(client, model):
    rf = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    r = chat(client, model, "Give me a JSON record of a person.", response_format=rf)
    c = r.choices[0]
    assert c.finish_reason == "stop", c
    jsonschema.validate(json.loads(c.message.content), PERSON)


def test_openai_json_object(client, model):
    r = chat(client, model, "Give me a JSON record.", response_format={"type": "json_object"})
    c = r.choices[0]
    assert c.finish_reason == "stop", c
    assert isinstance(json.loads(c.message.content), dict)


def test_openai_pydantic(client, model):
    messages = [{"role": "user", "content": "Give me a JSON record of a city."}]
    parse = getattr(client.chat.completions, "parse", None) or client.beta.chat.completions.parse
    r = parse(model=model, messages=messages, response_format=City, max_tokens=MAX_TOKENS, temperature=0)
    msg = r.choices[0].message
    assert isinstance(msg.parsed, City), msg
    assert City.model_validate_json(msg.content) == msg.parsed
    # The plain-dict route to the same schema gives the same (greedy) answer.
    rf = {"type": "json_schema", "json_schema": {"name": "City", "schema": City.model_json_schema()}}
    plain = chat(client, model, "Give me a JSON record of a city.", response_format=rf)
    assert City.model_validate_json(plain.choices[0].message.content)


def test_openai_invalid_schema_is_400(client, model):
    rf = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "object", "properties": {"foo": "bar"}}}}
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, model, "hi", response_format=rf)
    assert "Invalid" in str(e.value)
    # Still serving.
    assert chat(client, model, "hi", max_tokens=4).choices[0].finish_reason in ("stop", "length")
