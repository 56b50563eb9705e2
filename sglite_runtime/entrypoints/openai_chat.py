"""``POST /v1/chat/completions``: chat template, response_format, tool calling, reasoning.

One request becomes one native ``GenerateReqInput``; what is specific to chat happens around
it: the prompt is rendered through the chat template (with tools and ``chat_template_kwargs``),
a required/named tool choice or a response_format becomes a JSON-schema constraint, and the
output is split into ``reasoning_content``, ``content`` and ``tool_calls`` (tool_calls.py,
reasoning.py), streamed as the matching deltas.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi import Request
from starlette.responses import Response, StreamingResponse

from sglite_runtime.entrypoints.http_utils import json_response
from sglite_runtime.entrypoints.openai_common import (APIError, _Deltas, _finish, _first, _run, _sampling,
                                                      _sse_stream, _usage)
from sglite_runtime.entrypoints.openai_protocol import ChatCompletionRequest, CompletionRequest
from sglite_runtime.entrypoints.reasoning import ReasoningStream, split_reasoning
from sglite_runtime.entrypoints.tool_calls import (AutoStreamParser, ToolError, ToolSpec, forced_call_schema,
                                                   parse_auto, parse_forced, parse_tool_request, render_messages,
                                                   template_knows_tools)
from sglite_runtime.managers.io_struct import GenerateReqInput


def render_chat(tm: Any, messages: list, add_generation_prompt: bool = True, tools: ToolSpec | None = None,
                template_kwargs: dict | None = None) -> str:
    """The prompt of ``messages`` (pydantic ChatMessage objects) through the chat template."""
    msgs, has_tool_turns = [], False
    for m in messages:
        content = m.content
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") != "text":
                    raise ValueError(f"Content parts of type {part.get('type')!r} are not supported.")
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        msg: dict[str, Any] = {"role": m.role, "content": content or ""}
        if m.tool_calls:
            msg["tool_calls"] = m.tool_calls
        if m.tool_call_id is not None:
            msg["tool_call_id"] = m.tool_call_id
        if m.name is not None:  # a participant's or a tool's name, for templates that render it (as SGLang)
            msg["name"] = m.name
        has_tool_turns |= m.role == "tool" or bool(m.tool_calls)
        msgs.append(msg)
    if not msgs:
        raise ValueError("messages must not be empty.")
    template = tm.chat_template or tm.tokenizer.chat_template
    if template is None:
        raise ValueError("This model has no chat template; use /v1/completions or pass --chat-template.")
    kwargs = dict(template_kwargs or {})
    if tools is not None or has_tool_turns:
        native = template_knows_tools(template)
        msgs = render_messages(msgs, tools, native)
        if native and tools is not None:
            kwargs["tools"] = tools.tools
    try:
        return tm.tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=False,
                                                chat_template=tm.chat_template, **kwargs)
    except Exception as e:  # template errors (e.g. "roles must alternate") are the client's
        raise ValueError(f"Could not apply the chat template: {e}") from None


def _response_format_schema(req: ChatCompletionRequest | CompletionRequest) -> str | None:
    rf = req.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        # Routed to the ``json_object`` grammar: any JSON object, nested to any depth.
        return json.dumps({"type": "object"})
    if rf.json_schema is None or rf.json_schema.schema_ is None:
        raise APIError(400, "response_format json_schema needs a schema.", "response_format")
    # ``strict`` (true, false or absent), ``name`` and ``description`` are deliberately not read:
    # the output is always constrained to the schema (JsonSchemaFormat says why).
    return json.dumps(rf.json_schema.schema_)


def _chat_logprobs(meta: dict, top: int) -> dict:
    content = []
    toks = meta.get("output_token_logprobs", [])
    tops = meta.get("output_top_logprobs", [])
    for k, (logprob, _tid, text) in enumerate(toks):
        text = text or ""
        entry = {"token": text, "logprob": logprob, "bytes": list(text.encode()), "top_logprobs": []}
        if top and k < len(tops) and tops[k]:
            entry["top_logprobs"] = [{"token": t or "", "logprob": l, "bytes": list((t or "").encode())}
                                     for l, _, t in tops[k]]
        content.append(entry)
    return {"content": content}


def _reasoning_parser(tm: Any, req: ChatCompletionRequest) -> str | None:
    """The parser splitting this request's thinking off, or None.  The server's
    ``--reasoning-parser`` applies unless ``separate_reasoning`` is false; a request may opt
    in with ``separate_reasoning: true`` on a server without one (the qwen3 format)."""
    if req.separate_reasoning is False:
        return None
    server = getattr(tm.server_args, "reasoning_parser", None)
    return server or ("qwen3" if req.separate_reasoning else None)


def _tool_spec(req: ChatCompletionRequest) -> ToolSpec | None:
    if req.functions is not None or req.function_call is not None:
        param = "functions" if req.functions is not None else "function_call"
        raise APIError(400, f"{param} (legacy function calling) is not supported; use tools and tool_choice.", param)
    try:
        return parse_tool_request(req.tools, req.tool_choice, req.parallel_tool_calls)
    except ToolError as e:
        raise APIError(400, str(e), e.param) from None


class _Choice:
    """Turns one choice's output text into message fields (whole or as stream deltas)."""

    def __init__(self, tools: ToolSpec | None, reasoning: str | None):
        self.tools = tools if tools is not None and tools.choice != "none" else None
        self.forced = self.tools is not None and self.tools.choice in ("required", "named")
        self.reasoning = reasoning
        self.stream_reasoning = ReasoningStream(reasoning) if reasoning else None
        self.auto = AutoStreamParser(self.tools) if self.tools is not None and not self.forced else None
        self.held = ""       # a forced call's JSON, parsed once complete
        self.num_calls = 0

    def message(self, text: str) -> dict:
        msg: dict[str, Any] = {"role": "assistant", "content": text}
        if self.reasoning:
            msg["reasoning_content"], text = split_reasoning(text, self.reasoning)
            msg["content"] = text
        if self.tools is not None:
            if self.forced:
                calls = parse_forced(text, self.tools)
                content = None if calls else text
            else:
                content, calls = parse_auto(text, self.tools)
            if calls:
                msg["content"], msg["tool_calls"] = content, calls
                self.num_calls = len(calls)
        return msg

    def deltas(self, text: str, final: bool) -> list[dict]:
        """Delta dicts for the new ``text`` (and the remainder when ``final``)."""
        out: list[dict] = []
        if self.stream_reasoning is not None:
            r, text = self.stream_reasoning.feed(text)
            if final:
                r2, c2 = self.stream_reasoning.finish()
                r, text = r + r2, text + c2
            if r:
                out.append({"reasoning_content": r})
        if self.tools is None:
            if text:
                out.append({"content": text})
            return out
        if self.forced:
            self.held += text
            if final:
                calls = parse_forced(self.held, self.tools)
                out += self._call_deltas(calls) if calls else ([{"content": self.held}] if self.held else [])
            return out
        assert self.auto is not None  # tools given and not forced
        content, calls = self.auto.feed(text)
        if final:
            c2, calls2 = self.auto.finish()
            content, calls = content + c2, calls + calls2
        if content:
            out.append({"content": content})
        return out + self._call_deltas(calls)

    def _call_deltas(self, calls: list[dict]) -> list[dict]:
        out = []
        for call in calls:
            fn = call["function"]
            # The SDK assembles a call from its deltas: id/name first, then the arguments.
            out.append({"tool_calls": [{"index": self.num_calls, "id": call["id"], "type": "function",
                                        "function": {"name": fn["name"], "arguments": ""}}]})
            out.append({"tool_calls": [{"index": self.num_calls, "function": {"arguments": fn["arguments"]}}]})
            self.num_calls += 1
        return out

    def finish_reason(self, meta: dict) -> str | None:
        fr = _finish(meta)
        return "tool_calls" if fr == "stop" and self.num_calls else fr


async def chat_completion(tm: Any, req: ChatCompletionRequest, request: Request) -> Response:
    top = req.top_logprobs
    if top is not None and not 0 <= top <= 20:
        raise APIError(400, f"top_logprobs must be in [0, 20], got {top}.", "top_logprobs")
    if top and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true.", "top_logprobs")
    tools = _tool_spec(req)
    schema = _response_format_schema(req)
    forced = forced_call_schema(tools) if tools is not None else None
    if forced is not None:
        if schema is not None:
            assert tools is not None  # forced comes from tools
            raise APIError(400, f"tool_choice {tools.choice!r} cannot be combined with response_format.",
                           "tool_choice")
        schema = json.dumps(forced)
    prompt = render_chat(tm, req.messages, tools=tools, template_kwargs=req.chat_template_kwargs)
    reasoning = _reasoning_parser(tm, req)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    sampling = _sampling(req, max_tokens, schema)
    thinking = (req.chat_template_kwargs or {}).get("enable_thinking", True) is not False
    if reasoning and thinking and any(k in sampling for k in ("regex", "json_schema", "choices", "ebnf")):
        sampling["require_reasoning"] = True  # the constraint starts after </think>
        # Everything before </think> is then thinking, with or without a leading <think>.
        reasoning = "deepseek-r1"
    obj = GenerateReqInput(text=prompt, sampling_params=sampling, rid=req.rid,
                           return_logprob=req.logprobs, top_logprobs_num=top or 0,
                           return_text_in_logprobs=True, stream=req.stream)
    n = req.n
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = tm.served_model_name

    if not req.stream:
        outs = await _run(tm, obj, request)
        choices = []
        for i, o in enumerate(outs):
            choice = _Choice(tools, reasoning)
            choices.append({"index": i, "message": choice.message(o["text"]),
                            "logprobs": _chat_logprobs(o["meta_info"], top or 0) if req.logprobs else None,
                            "finish_reason": choice.finish_reason(o["meta_info"])})
        return json_response({"id": cid, "object": "chat.completion", "created": created, "model": model,
                              "choices": choices, "usage": _usage(outs, n)})

    agen = tm.generate_request(obj, request)
    first = await _first(agen)
    deltas = _Deltas()
    states: dict[int, _Choice] = {}

    def chunk(i: int, delta: dict, logprobs: Any, finish: str | None) -> dict:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

    def make(item: dict) -> list[dict]:
        i, text, meta = deltas.step(item)
        out = []
        if i not in states:
            states[i] = _Choice(tools, reasoning)
            out.append(chunk(i, {"role": "assistant", "content": ""}, None, None))
        state = states[i]
        finished = _finish(meta) is not None
        lps = _chat_logprobs(meta, top or 0) if req.logprobs else None
        parts = state.deltas(text, finished)
        if lps and lps["content"] and not parts:
            parts = [{}]
        for k, delta in enumerate(parts):
            out.append(chunk(i, delta, lps if k == 0 else None, None))
        if finished:
            out.append(chunk(i, {}, None, state.finish_reason(meta)))
        return out

    def finish() -> list[dict]:
        if req.stream_options and req.stream_options.include_usage:
            return [{"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [], "usage": deltas.usage(n)}]
        return []

    return StreamingResponse(_sse_stream(first, agen, make, finish), media_type="text/event-stream")
