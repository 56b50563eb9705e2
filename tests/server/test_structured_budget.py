"""Complete within budget over HTTP (issue 14 item 1): a constrained output always closes
inside ``max_tokens`` when the budget allows any valid output, and a budget below the
shortest valid output is a 400 that names the minimum.

The reference checks are pydantic (``parse``), ``jsonschema`` and ``re.fullmatch``.
"""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel


class Event(BaseModel):
    """Unbounded strings and numbers: the shape a weak model runs out of tokens in."""

    title: str
    location: str
    attendees: list[str]
    price: float
    confirmed: bool


NUMBER_SCHEMA = {"type": "object", "properties": {"x": {"type": "number"}, "note": {"type": "string"}},
                 "required": ["x", "note"]}


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_pydantic_parse_never_truncates(client, model, temperature):
    for seed in range(3):
        completion = client.chat.completions.parse(
            model=model, messages=[{"role": "user", "content": "Describe a concert as JSON."}],
            response_format=Event, max_tokens=64, temperature=temperature, seed=seed)
        choice = completion.choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(choice.message.parsed, Event)
        assert completion.usage.completion_tokens <= 64


def _generate(server, **sampling) -> httpx.Response:
    body = {"text": "A JSON record:", "sampling_params": {"temperature": 0, **sampling}}
    return httpx.post(server.url + "/generate", json=body, timeout=120)


@pytest.mark.parametrize("max_new_tokens", [24, 40])
def test_generate_schema_closes_in_budget(server, max_new_tokens):
    r = _generate(server, json_schema=json.dumps(NUMBER_SCHEMA), max_new_tokens=max_new_tokens)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["meta_info"]["finish_reason"]["type"] == "stop", out["meta_info"]
    assert out["meta_info"]["completion_tokens"] <= max_new_tokens
    jsonschema.validate(json.loads(out["text"]), NUMBER_SCHEMA)


def test_generate_regex_closes_in_budget(server):
    pattern = r"[a-z]+( [a-z]+)*\."
    r = _generate(server, regex=pattern, max_new_tokens=6, temperature=1.0, seed=3)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["meta_info"]["finish_reason"]["type"] == "stop"
    assert re.fullmatch(pattern, out["text"]), out["text"]


def test_budget_below_minimum_is_400(server, client, model):
    r = _generate(server, regex=r"[0-9]{40}", max_new_tokens=3)
    assert r.status_code == 400, r.text
    assert "max_new_tokens=3" in r.text and "at least" in r.text
    with pytest.raises(openai.BadRequestError, match="at least"):
        client.chat.completions.parse(
            model=model, messages=[{"role": "user", "content": "JSON please."}], response_format=Event, max_tokens=2)
    # And the server keeps serving constrained requests.
    assert _generate(server, regex=r"(yes|no)", max_new_tokens=4).status_code == 200


def test_streamed_budget_below_minimum_is_400(client, model):
    # The rejection comes once the grammar is compiled, before the first chunk: still a 400.
    schema = {"type": "object", "properties": {"code": {"type": "string", "pattern": "^[0-9]{30}$"}},
              "required": ["code"]}
    with pytest.raises(openai.BadRequestError, match="at least"):
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "A code."}], max_tokens=4, stream=True,
            response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": schema}})
        for _ in stream:
            pass


def test_streamed_output_closes_in_budget(client, model):
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Describe a concert as JSON."}], max_tokens=40,
        stream=True, temperature=1.0, seed=5,
        response_format={"type": "json_schema", "json_schema": {"name": "e", "schema": Event.model_json_schema()}})
    text, finish = "", None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    Event.model_validate_json(text)
