"""OpenAI tool calling: request validation, prompt rendering, constraint and output parsing.

Format: Qwen2.5/Qwen3/Hermes, i.e. the model writes each call as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.  A chat template that knows
tools (it mentions ``tools``) renders them itself; otherwise (the shipped model) a Hermes-style
system block is prepended and tool turns are rendered as user turns in ``<tool_response>``.

* ``tool_choice="auto"``: free generation; the text is parsed for ``<tool_call>`` blocks.
* ``"required"`` / a named function: the output is constrained by a JSON schema of the call(s)
  (``{"name": const, "arguments": <the function's parameters schema>}``), so the arguments
  always parse and validate, and they close within ``max_tokens`` (the budget guarantee of
  the default grammar backend).
* ``"none"``: tools are shown but the output is plain content.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

from sglite_runtime.constrained.specs import parse_schema

TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_CALL_RE = re.compile(re.escape(TOOL_CALL_START) + r"(.*?)(?:" + re.escape(TOOL_CALL_END) + r"|$)", re.S)

HERMES_SYSTEM = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}}\n</tool_call>"
)


class ToolError(ValueError):
    """A request error about tools; ``param`` names the offending field (HTTP 400)."""

    def __init__(self, message: str, param: str = "tools"):
        super().__init__(message)
        self.param = param


@dataclass
class ToolSpec:
    """The validated tool part of a chat request."""

    tools: list[dict]            # OpenAI tool objects, as sent
    choice: str                  # "none" | "auto" | "required" | "named"
    named: str | None            # the forced function of a named choice
    parallel: bool

    @property
    def names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools]

    def function(self, name: str) -> dict:
        return next(t["function"] for t in self.tools if t["function"]["name"] == name)


def parse_tool_request(tools: list | None, tool_choice: Any, parallel: bool | None) -> ToolSpec | None:
    """Validate ``tools``/``tool_choice``; None when the request has no tools."""
    if tool_choice is not None and not tools and tool_choice != "none":
        raise ToolError("tool_choice needs tools.", "tool_choice")
    if not tools:
        return None
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise ToolError(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{...}}}}.")
        fn = tool["function"]
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ToolError(f"tools[{i}].function.name must match [a-zA-Z0-9_-]{{1,64}}, got {name!r}.")
        if name in seen:
            raise ToolError(f"tools[{i}].function.name {name!r} is used twice.")
        seen.add(name)
        params = fn.get("parameters")
        if params is not None:
            try:
                parse_schema(params)
            except ValueError as e:
                raise ToolError(f"tools[{i}].function.parameters: {e}") from None
    named = None
    if tool_choice is None:
        choice = "auto"
    elif isinstance(tool_choice, str):
        if tool_choice not in ("none", "auto", "required"):
            raise ToolError(f"tool_choice must be 'none', 'auto', 'required' or a function, got {tool_choice!r}.",
                            "tool_choice")
        choice = tool_choice
    else:
        fn = tool_choice.get("function") if isinstance(tool_choice, dict) else None
        named = fn.get("name") if isinstance(fn, dict) else None
        if tool_choice.get("type") != "function" or not isinstance(named, str):
            raise ToolError("tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}}.", "tool_choice")
        if named not in seen:
            raise ToolError(f"tool_choice names function {named!r}, which is not in tools.", "tool_choice")
        choice = "named"
    return ToolSpec(list(tools), choice, named, True if parallel is None else bool(parallel))


# ---- the constraint of required / named calls ------------------------------------------------
def _call_schema(fn: dict) -> dict:
    params = fn.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
            "required": ["name", "arguments"], "additionalProperties": False}


def forced_call_schema(spec: ToolSpec) -> dict | None:
    """The JSON schema the output must follow (None for "auto"/"none").

    Named: one call object.  Required: one call (any tool), or a non-empty array of calls
    when ``parallel_tool_calls`` allows several."""
    if spec.choice == "named":
        assert spec.named is not None  # set for a named choice
        return _call_schema(spec.function(spec.named))
    if spec.choice != "required":
        return None
    calls = [_call_schema(t["function"]) for t in spec.tools]
    one = calls[0] if len(calls) == 1 else {"anyOf": calls}
    return {"type": "array", "items": one, "minItems": 1} if spec.parallel else one


# ---- rendering ---------------------------------------------------------------------------------
def template_knows_tools(template: str | None) -> bool:
    return template is not None and "tools" in template


def render_messages(messages: list[dict], spec: ToolSpec | None, native: bool) -> list[dict]:
    """Messages for a template without tool support: tools in a Hermes system block, assistant
    tool calls as ``<tool_call>`` text, tool results as user turns in ``<tool_response>``.
    With ``native`` (the template renders tools itself) only the call arguments are decoded."""
    out: list[dict] = []
    for m in messages:
        m = dict(m)
        calls = m.get("tool_calls") or []
        if native:
            if calls:
                m["tool_calls"] = [_native_call(c) for c in calls]
            out.append(m)
            continue
        if m["role"] == "assistant" and calls:
            text = [m.get("content") or ""]
            for c in calls:
                fn = c.get("function", {})
                text.append(f"{TOOL_CALL_START}\n{json.dumps({'name': fn.get('name'), 'arguments': _args(fn)})}\n"
                            f"{TOOL_CALL_END}")
            out.append({"role": "assistant", "content": "\n".join(t for t in text if t)})
        elif m["role"] == "tool":
            block = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("_tool"):
                out[-1]["content"] += "\n" + block
            else:
                out.append({"role": "user", "content": block, "_tool": True})
        else:
            out.append({"role": m["role"], "content": m.get("content") or ""})
    if spec is not None and not native:
        block = HERMES_SYSTEM.format(tools="\n".join(json.dumps(t) for t in spec.tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + block}
        else:
            out.insert(0, {"role": "system", "content": block})
    return [{k: v for k, v in m.items() if k != "_tool"} for m in out]


def _args(fn: dict) -> Any:
    args = fn.get("arguments")
    if isinstance(args, str):
        try:
            return json.loads(args)
        except ValueError:
            return args
    return args


def _native_call(call: dict) -> dict:
    fn = dict(call.get("function", {}))
    fn["arguments"] = _args(fn)
    return {**call, "function": fn}


# ---- parsing the output ---------------------------------------------------------------------------
def new_call(name: str, arguments: Any) -> dict:
    """An OpenAI ``tool_calls`` entry (arguments serialized as a JSON string)."""
    args = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": args}}


def _call_from_json(text: str, names: list[str]) -> dict | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    return new_call(obj["name"], args if args is not None else {})


def parse_forced(text: str, spec: ToolSpec) -> list[dict] | None:
    """Calls of a constrained (required/named) output; None if it did not complete."""
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    objs = obj if isinstance(obj, list) else [obj]
    calls = [_call_from_json(json.dumps(o), spec.names) for o in objs]
    valid = [c for c in calls if c is not None]
    return None if len(valid) != len(calls) else valid


def parse_auto(text: str, spec: ToolSpec) -> tuple[str | None, list[dict]]:
    """``(content, calls)`` of a free output: ``<tool_call>`` blocks that hold a known
    function become calls (the first only unless ``parallel``); the rest stays content."""
    calls: list[dict] = []
    if TOOL_CALL_START not in text:
        return text, calls
    kept, pos = [], 0
    for m in _CALL_RE.finditer(text):
        call = _call_from_json(m.group(1).strip(), spec.names)
        if call is None:
            continue
        kept.append(text[pos:m.start()])
        pos = m.end()
        if spec.parallel or not calls:
            calls.append(call)
    if not calls:
        return text, calls
    kept.append(text[pos:])
    content = "".join(kept).strip()
    return content or None, calls


class AutoStreamParser:
    """Streaming ``auto``: content deltas pass through until ``<tool_call>`` may start; call
    blocks are held back and come out whole (one tool-call delta each) once closed."""

    def __init__(self, spec: ToolSpec):
        self.spec = spec
        self.buffer = ""
        self.calls: list[dict] = []

    def feed(self, delta: str) -> tuple[str, list[dict]]:
        """New content to send, and newly completed calls."""
        self.buffer += delta
        content = ""
        new: list[dict] = []
        while True:
            start = self.buffer.find(TOOL_CALL_START)
            if start < 0:
                # Hold back a tail that could be the start of "<tool_call>".
                keep = _partial_suffix(self.buffer, TOOL_CALL_START)
                content += self.buffer[: len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep:]
                return content, new
            end = self.buffer.find(TOOL_CALL_END, start)
            if end < 0:
                content += self.buffer[:start]
                self.buffer = self.buffer[start:]
                return content, new
            call = _call_from_json(self.buffer[start + len(TOOL_CALL_START):end].strip(), self.spec.names)
            if call is None:
                content += self.buffer[: end + len(TOOL_CALL_END)]
            else:
                content += self.buffer[:start]
                if self.spec.parallel or not self.calls:
                    self.calls.append(call)
                    new.append(call)
            self.buffer = self.buffer[end + len(TOOL_CALL_END):]

    def finish(self) -> tuple[str, list[dict]]:
        """At the end: an unclosed call block that still parses counts; else it is content."""
        rest, self.buffer = self.buffer, ""
        if rest.startswith(TOOL_CALL_START):
            call = _call_from_json(rest[len(TOOL_CALL_START):].strip(), self.spec.names)
            if call is not None and (self.spec.parallel or not self.calls):
                self.calls.append(call)
                return "", [call]
        return rest, []


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
