"""The /v1 request models are strict like /generate: a string number, a number for a boolean or
a float for an integer is a 400 naming the field, never silently coerced. SDK-shaped requests
(an integer temperature, nested objects) still work."""

from __future__ import annotations

import httpx
import pytest
from reliability_utils import assert_server_well

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"prompt": "hi"}

# (field values, the dotted field the 400 must name). Each used to be coerced ("5" → 5).
HOSTILE = [
    ({"max_tokens": "5"}, "max_tokens"),
    ({"max_tokens": 5.0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"temperature": "0.5"}, "temperature"),
    ({"top_p": "1"}, "top_p"),
    ({"n": "2"}, "n"),
    ({"seed": "7"}, "seed"),
    ({"stream": "yes"}, "stream"),
    ({"stream": 1}, "stream"),
    ({"ignore_eos": "true"}, "ignore_eos"),
    ({"top_k": "3"}, "top_k"),
    ({"min_tokens": 1.5}, "min_tokens"),
    ({"stop_token_ids": ["2"]}, "stop_token_ids.0"),
    ({"presence_penalty": "0"}, "presence_penalty"),
    ({"logit_bias": {"5": "1"}}, "logit_bias.5"),
    ({"stream_options": {"include_usage": "yes"}, "stream": True}, "stream_options.include_usage"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {}, "strict": "yes"}}},
     "response_format.json_schema.strict"),
]
CHAT_ONLY = [
    ({"logprobs": 1}, "logprobs"),
    ({"top_logprobs": "2", "logprobs": True}, "top_logprobs"),
    ({"max_completion_tokens": "4"}, "max_completion_tokens"),
    ({"separate_reasoning": "no"}, "separate_reasoning"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0"),
]
COMPLETION_ONLY = [({"logprobs": "1"}, "logprobs"), ({"echo": "false"}, "echo")]


@pytest.mark.parametrize("path,base,cases", [
    ("/v1/completions", COMPLETION, HOSTILE + COMPLETION_ONLY),
    ("/v1/chat/completions", CHAT, HOSTILE + CHAT_ONLY),
])
def test_loose_types_are_refused_by_name(rserver, path, base, cases):
    failures = []
    for fields, name in cases:
        r = httpx.post(rserver.url + path, json=base | {"max_tokens": 2} | fields, timeout=60)
        msg = r.json().get("error", {}).get("message", "") if r.status_code == 400 else ""
        if f"'{name}" not in msg:
            failures.append((fields, r.status_code, r.text[:200]))
    assert not failures, failures
    assert_server_well(rserver.url)


def test_sdk_shaped_values_still_work(rserver):
    # An integer where a float is due (JSON has one number type); null for an optional field.
    for path, base in [("/v1/completions", COMPLETION), ("/v1/chat/completions", CHAT)]:
        r = httpx.post(rserver.url + path, json=base | {"max_tokens": 2, "temperature": 0, "top_p": 1,
                                                          "seed": None, "stream_options": None}, timeout=60)
        assert r.status_code == 200, r.text[:300]
    r = httpx.post(rserver.url + "/tokenize", json={"prompt": "hi", "add_special_tokens": "no"}, timeout=60)
    assert r.status_code == 400 and "add_special_tokens" in r.text, r.text[:300]
