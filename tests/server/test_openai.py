"""The OpenAI surface, driven by the real ``openai`` client."""

from __future__ import annotations

import httpx
import openai
import pytest


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def test_models(server, client, model):
    cards = client.models.list().data
    assert len(cards) == 1 and cards[0].id == model
    assert client.models.retrieve(model).id == model
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    r = httpx.get(server.url + "/v1/models/no-such-model")
    assert r.status_code == 404 and "does not exist" in r.json()["error"]["message"]


def test_completion_basic(client, model):
    r = client.completions.create(model=model, prompt="The list", temperature=0)
    c = r.choices[0]
    assert r.usage.completion_tokens <= 16 and c.finish_reason in ("stop", "length")  # default max_tokens 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def test_completion_variants(client, model):
    r = client.completions.create(model=model, prompt=["a b", "c d"], max_tokens=3, n=2, temperature=0.8, seed=7)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    r1 = client.completions.create(model=model, prompt="seeded", max_tokens=6, temperature=1.0, seed=42)
    r2 = client.completions.create(model=model, prompt="seeded", max_tokens=6, temperature=1.0, seed=42)
    assert r1.choices[0].text == r2.choices[0].text
    ids = client.completions.create(model=model, prompt=[5, 6, 7], max_tokens=2, temperature=0)
    assert ids.usage.prompt_tokens == 3
    echo = client.completions.create(model=model, prompt="echo me", max_tokens=2, echo=True, temperature=0)
    assert echo.choices[0].text.startswith("echo me")
    lp = client.completions.create(model=model, prompt="x y", max_tokens=3, logprobs=2, temperature=0,
                                   extra_body={"top_k": 5, "min_p": 0.0, "repetition_penalty": 1.1, "ignore_eos": True})
    lps = lp.choices[0].logprobs
    assert len(lps.tokens) == len(lps.token_logprobs) == 3 and all(len(t) <= 2 for t in lps.top_logprobs)
    assert lp.choices[0].finish_reason == "length"
    st = client.completions.create(model=model, prompt="z", max_tokens=8, stop=["\n"], temperature=0,
                                   presence_penalty=0.5, frequency_penalty=0.5, top_p=0.9)
    assert "\n" not in st.choices[0].text


def test_completion_stream_usage(client, model):
    chunks = list(client.completions.create(model=model, prompt="stream", max_tokens=5, stream=True, temperature=0,
                                            stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    text = "".join(c.choices[0].text for c in chunks[:-1])
    full = client.completions.create(model=model, prompt="stream", max_tokens=5, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert text == full.choices[0].text
    assert chunks[-2].choices[0].finish_reason == "length"


def test_chat(client, model):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    r = client.chat.completions.create(model=model, messages=msgs, max_tokens=5, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 2
    r2 = client.chat.completions.create(model=model, messages=msgs, max_completion_tokens=5, temperature=0)
    assert r2.choices[0].message.content == r.choices[0].message.content
    assert r2.usage.prompt_tokens_details.cached_tokens > 0  # same prompt: a prefix-cache hit
    n = client.chat.completions.create(model=model, messages=msgs, max_tokens=3, n=3, seed=1)
    assert len(n.choices) == 3
    lp = client.chat.completions.create(model=model, messages=msgs, max_tokens=3, logprobs=True, top_logprobs=2,
                                        temperature=0)
    content = lp.choices[0].logprobs.content
    assert len(content) == lp.usage.completion_tokens and len(content[0].top_logprobs) == 2


def test_chat_stream_usage(client, model):
    msgs = [{"role": "user", "content": "Count"}]
    chunks = list(client.chat.completions.create(model=model, messages=msgs, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens <= 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    full = client.chat.completions.create(model=model, messages=msgs, max_tokens=6, temperature=0)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_chat_response_format_and_tools(client, model):
    msgs = [{"role": "user", "content": "json please"}]
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    for fmt in ({"type": "json_object"}, {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}):
        try:
            r = client.chat.completions.create(model=model, messages=msgs, max_tokens=20, response_format=fmt)
            assert r.choices[0].finish_reason in ("stop", "length")
        except openai.BadRequestError:
            pass  # a grammar backend may refuse; never a 5xx
    # Tools work (tests/server/test_tool_calls.py); legacy functions are refused by name.
    with pytest.raises(openai.BadRequestError, match="functions"):
        client.chat.completions.create(model=model, messages=msgs, functions=[
            {"name": "f", "parameters": {"type": "object"}}])
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-9", messages=msgs)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-9", prompt="x")
