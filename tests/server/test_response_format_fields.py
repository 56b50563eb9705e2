"""``response_format.json_schema``: ``strict`` (true, false or absent) and ``description`` are
accepted, and the output is constrained to the schema whatever they say."""

from __future__ import annotations

import json

import httpx
import jsonschema

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"],
          "additionalProperties": False}


def test_strict_and_description_never_loosen_the_schema(server):
    texts = []
    for extra in ({}, {"strict": True}, {"strict": False}, {"strict": None, "description": "a number, boxed"}):
        rf = {"type": "json_schema", "json_schema": {"name": "box", "schema": SCHEMA} | extra}
        body = {"messages": [{"role": "user", "content": "A number?"}], "max_tokens": 24, "temperature": 0,
                "response_format": rf}
        r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=120)
        assert r.status_code == 200, (extra, r.text[:300])
        choice = r.json()["choices"][0]
        jsonschema.validate(json.loads(choice["message"]["content"]), SCHEMA)
        assert choice["finish_reason"] == "stop", choice
        texts.append(choice["message"]["content"])
    assert len(set(texts)) == 1, texts  # greedy: none of the fields changes the answer
