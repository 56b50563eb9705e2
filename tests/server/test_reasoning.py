"""Reasoning separation: ``<think>...</think>`` -> ``reasoning_content`` (whole and streamed),
``separate_reasoning``, ``--reasoning-parser``, and ``chat_template_kwargs`` reaching the template.

The tiny model does not think by itself, so the SGLang ``regex`` extra makes it write a
thinking block; the expected split is known exactly.  With a constraint and thinking on, the
constraint applies to the answer only (after ``</think>``).
"""

from __future__ import annotations

import json
import types

import openai
import pytest
from transformers import AutoTokenizer

from sglite_runtime.entrypoints.openai_chat import _reasoning_parser, render_chat
from sglite_runtime.entrypoints.openai_protocol import ChatCompletionRequest, ChatMessage
from sglite_runtime.entrypoints.reasoning import ReasoningStream, split_reasoning

THOUGHT, ANSWER = "the user wants a city", "Paris"
OUTPUT = f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"
REGEX = r"<think>\nthe user wants a city\n</think>\n\nParis"
MSGS = [{"role": "user", "content": "Capital of France?"}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def test_split_whole_and_streamed():
    assert split_reasoning(OUTPUT, "qwen3") == (THOUGHT, ANSWER)
    assert split_reasoning("no thinking here", "qwen3") == (None, "no thinking here")
    assert split_reasoning("<think>cut by the budg", "qwen3") == ("cut by the budg", "")
    assert split_reasoning(f"{THOUGHT}</think>{ANSWER}", "deepseek-r1") == (THOUGHT, ANSWER)
    assert split_reasoning("still thinking", "deepseek-r1") == ("still thinking", "")
    for parser, text in (("qwen3", OUTPUT), ("qwen3", "plain <think> later"), ("deepseek-r1", f"{THOUGHT}</think>{ANSWER}"),
                         ("deepseek-r1", OUTPUT)):
        whole = split_reasoning(text, parser)
        for step in (1, 2, 5, 100):
            rs, r, c = ReasoningStream(parser), "", ""
            for k in range(0, len(text), step):
                dr, dc = rs.feed(text[k:k + step])
                r, c = r + dr, c + dc
            dr, dc = rs.finish()
            r, c = (r + dr).strip() or None, c + dc
            assert (r, c) == whole, (parser, text, step)
            assert "<think>" not in c or parser == "qwen3" and text.startswith("plain")


def test_reasoning_content_over_http(client, model):
    kw = dict(model=model, messages=MSGS, max_tokens=48, temperature=0, extra_body={"regex": REGEX})
    # A server without --reasoning-parser: the content is the whole text unless asked.
    r = client.chat.completions.create(**kw)
    assert r.choices[0].message.content == OUTPUT
    # enable_thinking=False keeps the regex on the whole output (with thinking on, a constraint
    # starts after </think>: test_grammar_applies_after_thinking), so the think block is known.
    kw["extra_body"] = {"regex": REGEX, "separate_reasoning": True, "chat_template_kwargs": {"enable_thinking": False}}
    r = client.chat.completions.create(**kw)
    msg = r.choices[0].message
    assert (msg.reasoning_content, msg.content) == (THOUGHT, ANSWER)
    reasoning, content = "", ""
    for chunk in client.chat.completions.create(stream=True, **kw):
        for choice in chunk.choices:
            reasoning += getattr(choice.delta, "reasoning_content", None) or ""
            content += choice.delta.content or ""
    assert (reasoning.strip(), content) == (THOUGHT, ANSWER)


def test_grammar_applies_after_thinking(client, model):
    """With a reasoning parser, the constraint starts after </think>: the thinking is free, the
    answer validates, and both fit in max_tokens (the marker is forced in time)."""
    schema = {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
              "required": ["n"], "additionalProperties": False}
    for max_tokens in (16, 24, 40):
        r = client.chat.completions.create(
            model=model, messages=MSGS, max_tokens=max_tokens, temperature=1.0, seed=max_tokens,
            response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
            extra_body={"separate_reasoning": True})
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens <= max_tokens
        assert msg.reasoning_content and 0 <= json.loads(msg.content)["n"] <= 9, msg
    r = client.chat.completions.create(  # thinking off in the template: the grammar starts at once
        model=model, messages=MSGS, max_tokens=16, temperature=0, response_format={"type": "json_object"},
        extra_body={"separate_reasoning": True, "chat_template_kwargs": {"enable_thinking": False}})
    assert r.choices[0].message.reasoning_content is None and json.loads(r.choices[0].message.content) is not None


def test_parser_choice_and_template_kwargs(model_path):
    def req(**kw):
        return ChatCompletionRequest(messages=[ChatMessage(role="user", content="x")], **kw)

    tm = types.SimpleNamespace(server_args=types.SimpleNamespace(reasoning_parser="qwen3"))
    assert _reasoning_parser(tm, req()) == "qwen3"
    assert _reasoning_parser(tm, req(separate_reasoning=False)) is None
    tm.server_args.reasoning_parser = None
    assert _reasoning_parser(tm, req()) is None and _reasoning_parser(tm, req(separate_reasoning=True)) == "qwen3"

    template = ("{% for m in messages %}{{ m.content }}{% endfor %}"
                "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>{% endif %}")
    tm = types.SimpleNamespace(chat_template=template, tokenizer=AutoTokenizer.from_pretrained(model_path))
    msgs = [ChatMessage(role="user", content="hi")]
    assert render_chat(tm, msgs) == "hi"
    assert render_chat(tm, msgs, template_kwargs={"enable_thinking": False}) == "hi<think>\n\n</think>"
