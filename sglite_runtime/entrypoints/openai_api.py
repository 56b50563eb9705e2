"""OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``, tokenize.

Each request is translated into one native ``GenerateReqInput`` (a batch for several prompts or
``n > 1``), so the OpenAI surface shares validation, scheduling and abort-on-disconnect with
``/generate``. Streaming turns the TokenizerManager's cumulative text into OpenAI deltas.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from sglite_runtime.entrypoints.http_utils import SSE_DONE, abort_status, error_body, error_response, json_response, sse
from sglite_runtime.entrypoints.openai_protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                                        SGLangExtras, TokenizeRequest)
from sglite_runtime.managers.tokenizer_manager import GenerateReqInput


class APIError(Exception):
    """An error with an HTTP status, rendered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def add_openai_routes(app: FastAPI, state: Any) -> None:
    """Register the ``/v1`` routes (and ``/tokenize``, ``/detokenize``) on ``app``."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return error_response(exc.message, exc.status, request.url.path, exc.param)

    def card() -> dict:
        tm = state.tm
        return {"id": tm.served_model_name, "object": "model", "created": int(_START), "owned_by": "sglite",
                "root": tm.model_path, "max_model_len": tm.context_len}

    @app.get("/v1/models")
    async def list_models() -> Response:
        return json_response({"object": "list", "data": [card()]})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        if model_id not in (state.tm.served_model_name, state.tm.model_path):
            return error_response(f"The model `{model_id}` does not exist.", 404, "/v1/", "model")
        body = card()
        return json_response(body)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request) -> Response:
        _check_model(state.tm, req.model)
        return await _completions(state.tm, req, request)

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatCompletionRequest, request: Request) -> Response:
        _check_model(state.tm, req.model)
        return await _chat(state.tm, req, request)

    async def tokenize(req: TokenizeRequest) -> Response:
        tm = state.tm
        _check_model(tm, req.model)
        if req.messages is not None:
            ids = tm.tokenizer.encode(_render_chat(tm, req.messages, req.add_generation_prompt), add_special_tokens=False)
        else:
            text = req.prompt if req.prompt is not None else req.text
            if text is None:
                raise ValueError("Send prompt (or messages) to tokenize.")
            ids = tm.tokenizer.encode(text, add_special_tokens=req.add_special_tokens)
        return json_response({"tokens": list(ids), "count": len(ids), "max_model_len": tm.context_len})

    async def detokenize(req: DetokenizeRequest) -> Response:
        tm = state.tm
        _check_model(tm, req.model)
        bad = [t for t in req.tokens if not 0 <= t < tm.vocab_size]
        if bad:
            raise ValueError(f"Token id {bad[0]} is out of vocabulary (vocabulary size {tm.vocab_size}).")
        text = tm.tokenizer.decode(req.tokens)
        return json_response({"prompt": text, "text": text})

    for prefix in ("", "/v1"):
        app.add_api_route(f"{prefix}/tokenize", tokenize, methods=["POST"])
        app.add_api_route(f"{prefix}/detokenize", detokenize, methods=["POST"])


_START = time.time()


def _check_model(tm: Any, model: str | None) -> None:
    if model is not None and model not in (tm.served_model_name, tm.model_path):
        raise APIError(404, f"The model `{model}` does not exist.", "model")


def _sampling(req: SGLangExtras, max_tokens: int | None, json_schema: str | None = None) -> dict:
    sp: dict[str, Any] = {
        "max_new_tokens": max_tokens, "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
        "min_p": req.min_p, "min_new_tokens": req.min_tokens, "repetition_penalty": req.repetition_penalty,
        "presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty,
        "stop": req.stop, "stop_token_ids": req.stop_token_ids, "ignore_eos": req.ignore_eos,
        "skip_special_tokens": req.skip_special_tokens, "no_stop_trim": req.no_stop_trim, "n": req.n,
        "seed": req.seed, "regex": req.regex, "logit_bias": req.logit_bias,
    }
    schema = json_schema if json_schema is not None else req.json_schema
    if isinstance(schema, dict):
        schema = json.dumps(schema)
    sp["json_schema"] = schema
    return {k: v for k, v in sp.items() if v is not None or k == "max_new_tokens"}


def _finish(meta: dict) -> str | None:
    fr = meta.get("finish_reason")
    if not fr:
        return None
    return {"stop": "stop", "length": "length"}.get(fr.get("type"), fr.get("type"))


def _usage(outs: list[dict], n: int) -> dict:
    # The prompt counts once per prompt, not once per sample.
    prompt = sum(o["meta_info"]["prompt_tokens"] for i, o in enumerate(outs) if i % n == 0)
    cached = sum(o["meta_info"]["cached_tokens"] for i, o in enumerate(outs) if i % n == 0)
    completion = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


async def _run(tm: Any, obj: GenerateReqInput, request: Request) -> list[dict]:
    """Non-streaming generation; always a list of outputs (prompt-major, then sample)."""
    out = None
    try:
        async for out in tm.generate_request(obj, request):
            pass
    except asyncio.CancelledError:
        raise APIError(499, "Client disconnected.") from None
    outs = out if isinstance(out, list) else [out]
    for o in outs:
        if bad := abort_status(o["meta_info"]):
            raise APIError(bad[0], bad[1])
    return outs


async def _first(agen: Any) -> Any:
    try:
        return await agen.__anext__()
    except StopAsyncIteration:
        return None
    except BaseException:
        await agen.aclose()
        raise


async def _sse_stream(first: Any, agen: Any, make_chunks: Any, finish: Any) -> AsyncIterator[str]:
    """Shared SSE loop: every TM chunk becomes zero or more OpenAI chunks; errors go in-band."""
    try:
        if first is not None:
            for c in make_chunks(first):
                yield sse(c)
        async for item in agen:
            for c in make_chunks(item):
                yield sse(c)
        for c in finish():
            yield sse(c)
    except asyncio.CancelledError:
        raise
    except Exception as e:
        yield sse(error_body(str(e) or type(e).__name__, 400 if isinstance(e, ValueError) else 500, True))
    finally:
        await agen.aclose()  # aborts whatever is still running (client gone, task cancelled)
    yield SSE_DONE


class _Deltas:
    """Cumulative text per choice index → deltas; remembers the last meta per index."""

    def __init__(self) -> None:
        self.sent: dict[int, int] = {}
        self.metas: dict[int, dict] = {}

    def step(self, chunk: dict) -> tuple[int, str, dict]:
        i = chunk.get("index", 0)
        text = chunk["text"]
        delta = text[self.sent.get(i, 0):]
        self.sent[i] = len(text)
        self.metas[i] = chunk["meta_info"]
        return i, delta, chunk["meta_info"]

    def usage(self, n: int) -> dict:
        return _usage([{"meta_info": self.metas[i]} for i in sorted(self.metas)], n)


class _LazyPrompts:
    def __init__(self, tm: Any, texts: list[str] | None, ids_list: list[list[int]] | None):
        self.tm, self.texts, self.ids_list = tm, texts, ids_list

    def __getitem__(self, i: int) -> str:
        if self.texts is not None:
            return self.texts[i]
        return self.tm.tokenizer.decode(self.ids_list[i])


# ---- /v1/completions ------------------------------------------------------------------------------
async def _completions(tm: Any, req: CompletionRequest, request: Request) -> Response:
    p = req.prompt
    if isinstance(p, str) or (isinstance(p, list) and p and isinstance(p[0], str)):
        texts = [p] if isinstance(p, str) else list(p)
        ids_list = None
        batch = not isinstance(p, str)
    else:
        texts = None
        ids_list = [p] if (not p or isinstance(p[0], int)) else list(p)
        batch = bool(p) and not isinstance(p[0], int)
    if req.best_of not in (None, 1, req.n):
        raise APIError(400, "best_of is not supported.", "best_of")
    if req.suffix:
        raise APIError(400, "suffix is not supported.", "suffix")
    lp = req.logprobs
    if lp is not None and not 0 <= lp <= 20:
        raise APIError(400, f"logprobs must be in [0, 20], got {lp}.", "logprobs")
    obj = GenerateReqInput(
        text=(texts if batch else texts[0]) if texts is not None else None,
        input_ids=(ids_list if batch else ids_list[0]) if ids_list is not None else None,
        sampling_params=_sampling(req, req.max_tokens), rid=req.rid, return_logprob=lp is not None,
        logprob_start_len=0 if (req.echo and lp is not None) else -1, top_logprobs_num=lp or 0,
        return_text_in_logprobs=True, stream=req.stream)
    # Echo text is decoded lazily: the ids are validated by the TokenizerManager first.
    prompts = _LazyPrompts(tm, texts, ids_list)
    n = req.n
    cid = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = tm.served_model_name

    def logprobs_of(meta: dict, with_input: bool) -> dict | None:
        if lp is None:
            return None
        toks = list(meta.get("output_token_logprobs", []))
        tops = list(meta.get("output_top_logprobs", [])) if lp else [None] * len(toks)
        if with_input:
            toks = list(meta.get("input_token_logprobs", [])) + toks
            tops = list(meta.get("input_top_logprobs") or [None] * len(meta.get("input_token_logprobs", []))) + tops
        out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        off = 0
        for (logprob, _tid, text), top in zip(toks, tops + [None] * (len(toks) - len(tops))):
            text = text or ""
            out["tokens"].append(text)
            out["token_logprobs"].append(logprob)
            out["top_logprobs"].append({t or "": l for l, _, t in top} if top else None)
            out["text_offset"].append(off)
            off += len(text)
        return out

    if not req.stream:
        outs = await _run(tm, obj, request)
        choices = []
        for i, o in enumerate(outs):
            text = (prompts[i // n] + o["text"]) if req.echo else o["text"]
            choices.append({"index": i, "text": text, "logprobs": logprobs_of(o["meta_info"], req.echo),
                            "finish_reason": _finish(o["meta_info"])})
        return json_response({"id": cid, "object": "text_completion", "created": created, "model": model,
                              "choices": choices, "usage": _usage(outs, n)})

    agen = tm.generate_request(obj, request)
    first = await _first(agen)
    deltas = _Deltas()
    echoed: set[int] = set()

    def chunk(c: dict, i: int, text: str, logprobs: Any, finish: str | None) -> dict:
        return {"id": cid, "object": "text_completion", "created": created, "model": model,
                "choices": [{"index": i, "text": text, "logprobs": logprobs, "finish_reason": finish}]}

    def make(item: dict) -> list[dict]:
        i, delta, meta = deltas.step(item)
        if req.echo and i not in echoed:
            echoed.add(i)
            delta = prompts[i // n] + delta
        return [chunk(item, i, delta, logprobs_of(meta, False), _finish(meta))]

    def finish() -> list[dict]:
        if req.stream_options and req.stream_options.include_usage:
            return [{"id": cid, "object": "text_completion", "created": created, "model": model, "choices": [],
                     "usage": deltas.usage(n)}]
        return []

    return StreamingResponse(_sse_stream(first, agen, make, finish), media_type="text/event-stream")


# ---- /v1/chat/completions ------------------------------------------------------------------------
def _render_chat(tm: Any, messages: list, add_generation_prompt: bool = True) -> str:
    msgs = []
    for m in messages:
        content = m.content
        if isinstance(content, list):
            parts = []
            for part in content:
                if part.get("type") != "text":
                    raise ValueError(f"Content parts of type {part.get('type')!r} are not supported.")
                parts.append(str(part.get("text", "")))
            content = "".join(parts)
        msgs.append({"role": m.role, "content": content or ""})
    if not msgs:
        raise ValueError("messages must not be empty.")
    if tm.tokenizer.chat_template is None and tm.chat_template is None:
        raise ValueError("This model has no chat template; use /v1/completions or pass --chat-template.")
    try:
        return tm.tokenizer.apply_chat_template(msgs, add_generation_prompt=add_generation_prompt, tokenize=False,
                                                chat_template=tm.chat_template)
    except Exception as e:  # template errors (e.g. "roles must alternate") are the client's
        raise ValueError(f"Could not apply the chat template: {e}") from None


def _response_format_schema(req: ChatCompletionRequest) -> str | None:
    rf = req.response_format
    if rf is None or rf.type == "text":
        return None
    if rf.type == "json_object":
        return json.dumps({"type": "object"})
    if rf.json_schema is None or rf.json_schema.schema_ is None:
        raise APIError(400, "response_format json_schema needs a schema.", "response_format")
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


async def _chat(tm: Any, req: ChatCompletionRequest, request: Request) -> Response:
    if req.tools:
        raise APIError(400, "tools are not supported by this server.", "tools")
    top = req.top_logprobs
    if top is not None and not 0 <= top <= 20:
        raise APIError(400, f"top_logprobs must be in [0, 20], got {top}.", "top_logprobs")
    if top and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true.", "top_logprobs")
    schema = _response_format_schema(req)
    if schema is not None and (req.regex or req.json_schema):
        raise APIError(400, "response_format cannot be combined with regex or json_schema.", "response_format")
    prompt = _render_chat(tm, req.messages)
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    obj = GenerateReqInput(text=prompt, sampling_params=_sampling(req, max_tokens, schema), rid=req.rid,
                           return_logprob=req.logprobs, top_logprobs_num=top or 0,
                           return_text_in_logprobs=True, stream=req.stream)
    n = req.n
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model = tm.served_model_name

    if not req.stream:
        outs = await _run(tm, obj, request)
        choices = [{"index": i, "message": {"role": "assistant", "content": o["text"]},
                    "logprobs": _chat_logprobs(o["meta_info"], top or 0) if req.logprobs else None,
                    "finish_reason": _finish(o["meta_info"])} for i, o in enumerate(outs)]
        return json_response({"id": cid, "object": "chat.completion", "created": created, "model": model,
                              "choices": choices, "usage": _usage(outs, n)})

    agen = tm.generate_request(obj, request)
    first = await _first(agen)
    deltas = _Deltas()
    started: set[int] = set()

    def chunk(i: int, delta: dict, logprobs: Any, finish: str | None) -> dict:
        return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]}

    def make(item: dict) -> list[dict]:
        i, text, meta = deltas.step(item)
        out = []
        if i not in started:
            started.add(i)
            out.append(chunk(i, {"role": "assistant", "content": ""}, None, None))
        lps = _chat_logprobs(meta, top or 0) if req.logprobs else None
        if text or lps and lps["content"] or _finish(meta):
            out.append(chunk(i, {"content": text} if text else {}, lps, _finish(meta)))
        return out

    def finish() -> list[dict]:
        if req.stream_options and req.stream_options.include_usage:
            return [{"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [], "usage": deltas.usage(n)}]
        return []

    return StreamingResponse(_sse_stream(first, agen, make, finish), media_type="text/event-stream")
