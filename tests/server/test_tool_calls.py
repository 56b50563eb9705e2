"""OpenAI tool calling through the real ``openai`` SDK: every tool_choice, streaming and not.

required / named: the output is constrained by the call schema, so every call's arguments
must parse and validate against the function's ``parameters`` (checked with jsonschema).
auto / none: the tiny model never writes ``<tool_call>`` by itself, so the SGLang ``regex``
extra makes it write one; the parser must turn it into a call (auto) or leave it (none).
"""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from transformers import AutoTokenizer

from sglite_runtime.entrypoints.tool_calls import AutoStreamParser, parse_auto, parse_tool_request

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                            "unit": {"type": "string", "enum": ["c", "f"]}},
           "required": ["city", "unit"], "additionalProperties": False}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                        "b": {"type": "integer", "minimum": 0, "maximum": 99}},
       "required": ["a", "b"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": WEATHER}},
         {"type": "function", "function": {"name": "add", "parameters": ADD}}]
PARAMS = {"get_weather": WEATHER, "add": ADD}
MSGS = [{"role": "user", "content": "What is the weather in Paris?"}]
CALL_TEXT = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
CALL_REGEX = r'<tool_call>\n\{"name": "get_weather", "arguments": \{"city": "Paris", "unit": "c"\}\}\n</tool_call>'


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def check_calls(calls, names=("get_weather", "add")) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])


def stream_message(client, **kw):
    """Run a streamed chat and assemble it with the SDK's own stream helper."""
    with client.chat.completions.stream(**kw) as stream:
        for _ in stream:
            pass
        return stream.get_final_completion().choices[0]


@pytest.mark.parametrize("parallel", [True, False])
def test_required(client, model, parallel):
    valid = 0
    for seed in range(4):
        r = client.chat.completions.create(model=model, messages=MSGS, tools=TOOLS, tool_choice="required",
                                           parallel_tool_calls=parallel, max_tokens=96, temperature=1.0, seed=seed)
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        check_calls(choice.message.tool_calls)
        assert parallel or len(choice.message.tool_calls) == 1
        assert choice.message.content is None
        valid += 1
    assert valid == 4


def test_named_stream_and_not(client, model):
    named = {"type": "function", "function": {"name": "add"}}
    r = client.chat.completions.create(model=model, messages=MSGS, tools=TOOLS, tool_choice=named,
                                       max_tokens=64, temperature=0)
    check_calls(r.choices[0].message.tool_calls, names=("add",))
    assert len(r.choices[0].message.tool_calls) == 1 and r.choices[0].finish_reason == "tool_calls"
    choice = stream_message(client, model=model, messages=MSGS, tools=TOOLS, tool_choice=named,
                            max_tokens=64, temperature=0)
    check_calls(choice.message.tool_calls, names=("add",))
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls[0].function.arguments == r.choices[0].message.tool_calls[0].function.arguments
    choice = stream_message(client, model=model, messages=MSGS, tools=TOOLS, tool_choice="required",
                            max_tokens=96, temperature=1.0, seed=3)
    check_calls(choice.message.tool_calls)


@pytest.mark.parametrize("stream", [False, True])
def test_auto_parses_tool_call(client, model, stream):
    kw = dict(model=model, messages=MSGS, tools=TOOLS, max_tokens=64, temperature=0, extra_body={"regex": CALL_REGEX})
    choice = stream_message(client, **kw) if stream else client.chat.completions.create(**kw).choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris", "unit": "c"}
    assert not choice.message.content


def test_auto_plain_answer_and_none(client, model):
    r = client.chat.completions.create(model=model, messages=MSGS, tools=TOOLS, max_tokens=8, temperature=0)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    r = client.chat.completions.create(model=model, messages=MSGS, tools=TOOLS, tool_choice="none", max_tokens=64,
                                       temperature=0, extra_body={"regex": CALL_REGEX})
    assert r.choices[0].message.tool_calls is None
    assert r.choices[0].message.content == CALL_TEXT and r.choices[0].finish_reason == "stop"


def test_tool_turns_render(server, client, model, model_path):
    history = MSGS + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "c"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 degrees"}]
    r = client.chat.completions.create(model=model, messages=history, tools=TOOLS, max_tokens=4, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length")
    ids = httpx.post(server.url + "/tokenize", json={"messages": history}, timeout=30).json()["tokens"]
    prompt = AutoTokenizer.from_pretrained(model_path).decode(ids)
    assert "<tool_response>\n21 degrees\n</tool_response>" in prompt
    assert '"name": "get_weather"' in prompt and "<tool_call>" in prompt


def test_bad_tool_requests_are_400(client, model):
    cases = [
        (dict(tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}}), "nope"),
        (dict(tools=[{"type": "function", "function": {"name": "f", "parameters": {"type": "bogus"}}}]), "tools"),
        (dict(tools=TOOLS + TOOLS[:1]), "twice"),
        (dict(tool_choice="required"), "tool_choice"),
        (dict(tools=TOOLS, tool_choice="required", response_format={"type": "json_object"}), "response_format"),
    ]
    for kw, word in cases:
        with pytest.raises(openai.BadRequestError, match=word):
            client.chat.completions.create(model=model, messages=MSGS, max_tokens=8, **kw)


# ---- the parser itself ------------------------------------------------------------------------
def test_parser_auto_and_stream_agree():
    spec = parse_tool_request(TOOLS, "auto", True)
    text = "Let me check. " + CALL_TEXT + "\n<tool_call>{\"name\": \"add\", \"arguments\": {\"a\": 1, \"b\": 2}}</tool_call>"
    content, calls = parse_auto(text, spec)
    assert content == "Let me check." and [c["function"]["name"] for c in calls] == ["get_weather", "add"]
    for step in (1, 3, 7):  # any split of the stream gives the same content and calls
        parser, streamed, got = AutoStreamParser(spec), "", []
        for k in range(0, len(text), step):
            c, new = parser.feed(text[k:k + step])
            streamed, got = streamed + c, got + new
        c, new = parser.finish()
        assert (streamed + c).strip() == content and [x["function"]["arguments"] for x in got + new] == \
            [x["function"]["arguments"] for x in calls]
    # Unknown function or broken JSON: left as content; parallel=False keeps the first call.
    assert parse_auto("<tool_call>{\"name\": \"zzz\", \"arguments\": {}}</tool_call>", spec)[1] == []
    assert parse_auto("<tool_call>{oops</tool_call>", spec) == ("<tool_call>{oops</tool_call>", [])
    assert len(parse_auto(text, parse_tool_request(TOOLS, "auto", False))[1]) == 1


def test_none_streamed(client, model):
    choice = stream_message(client, model=model, messages=MSGS, tools=TOOLS, tool_choice="none", max_tokens=64,
                            temperature=0, extra_body={"regex": CALL_REGEX})
    assert not choice.message.tool_calls and choice.message.content == CALL_TEXT and choice.finish_reason == "stop"


def test_template_with_tools_renders_natively(model_path):
    """A template that knows tools (Qwen-style) gets ``tools=`` and the tool turns as they are."""
    import types

    from sglite_runtime.entrypoints.openai_chat import render_chat
    from sglite_runtime.entrypoints.openai_protocol import ChatMessage

    template = ("{% if tools %}TOOLS:{% for t in tools %}{{ t.function.name }};{% endfor %}\n{% endif %}"
                "{% for m in messages %}{{ m.role }}:{{ m.content }}"
                "{% if m.tool_calls %}{% for c in m.tool_calls %}CALL {{ c.function.name }} "
                "{{ c.function.arguments.city }}{% endfor %}{% endif %}\n{% endfor %}")
    tm = types.SimpleNamespace(chat_template=template, tokenizer=AutoTokenizer.from_pretrained(model_path))
    msgs = [ChatMessage(role="user", content="hi"),
            ChatMessage(role="assistant", content=None, tool_calls=[
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]),
            ChatMessage(role="tool", content="5C", tool_call_id="c1")]
    prompt = render_chat(tm, msgs, tools=parse_tool_request(TOOLS, "auto", True))
    assert prompt.startswith("TOOLS:get_weather;add;") and "CALL get_weather Oslo" in prompt and "tool:5C" in prompt
