"""OpenAI-compatible routes: ``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``, tokenize.

Each request is translated into one native ``GenerateReqInput`` (a batch for several prompts or
``n > 1``), so the OpenAI surface shares validation, scheduling and abort-on-disconnect with
``/generate``. Streaming turns the TokenizerManager's cumulative text into OpenAI deltas.
The chat route (tools, reasoning) lives in openai_chat.py, shared helpers in openai_common.py.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, cast

from fastapi import FastAPI, Request
from starlette.responses import Response, StreamingResponse

from sglite_runtime.entrypoints.http_utils import error_response, json_response
from sglite_runtime.entrypoints.openai_chat import _response_format_schema, chat_completion, render_chat
from sglite_runtime.entrypoints.openai_common import (APIError, _check_model, _Deltas, _finish, _first, _run,
                                                      _sampling, _sse_stream, _usage)
from sglite_runtime.entrypoints.openai_protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest,
                                                        TokenizeRequest)
from sglite_runtime.managers.io_struct import GenerateReqInput

#: Kept under its old name (tests and callers render prompts with it).
_render_chat = render_chat


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
        return await chat_completion(state.tm, req, request)

    async def tokenize(req: TokenizeRequest) -> Response:
        tm = state.tm
        _check_model(tm, req.model)
        if req.messages is not None:
            ids = await tm.encode(render_chat(tm, req.messages, req.add_generation_prompt), add_special_tokens=False)
        else:
            text = req.prompt if req.prompt is not None else req.text
            if text is None:
                raise ValueError("Send prompt (or messages) to tokenize.")
            ids = await tm.encode(text, add_special_tokens=req.add_special_tokens)  # checked, off the loop if large
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


class _LazyPrompts:
    def __init__(self, tm: Any, texts: list[str] | None, ids_list: list[list[int]] | None):
        self.tm, self.texts, self.ids_list = tm, texts, ids_list

    def __getitem__(self, i: int) -> str:
        if self.texts is not None:
            return self.texts[i]
        assert self.ids_list is not None  # one of texts and ids_list is set
        return self.tm.tokenizer.decode(self.ids_list[i])


# ---- /v1/completions ------------------------------------------------------------------------------
async def _completions(tm: Any, req: CompletionRequest, request: Request) -> Response:
    p = req.prompt
    if isinstance(p, str) or (isinstance(p, list) and p and isinstance(p[0], str)):
        texts: list[str] | None = [p] if isinstance(p, str) else cast("list[str]", list(p))
        ids_list: list[list[int]] | None = None
        batch = not isinstance(p, str)
    else:
        texts = None
        ids_list = [cast("list[int]", p)] if (not p or isinstance(p[0], int)) else cast("list[list[int]]", list(p))
        batch = bool(p) and not isinstance(p[0], int)
    if req.best_of not in (None, 1, req.n):
        raise APIError(400, "best_of is not supported.", "best_of")
    if req.suffix:
        raise APIError(400, "suffix is not supported.", "suffix")
    if req.tools is not None:
        raise APIError(400, "tools are not supported on /v1/completions; use /v1/chat/completions.", "tools")
    lp = req.logprobs
    if lp is not None and not 0 <= lp <= 20:
        raise APIError(400, f"logprobs must be in [0, 20], got {lp}.", "logprobs")
    obj = GenerateReqInput(
        text=(texts if batch else texts[0]) if texts is not None else None,
        input_ids=(ids_list if batch else ids_list[0]) if ids_list is not None else None,
        sampling_params=_sampling(req, req.max_tokens, _response_format_schema(req)), rid=req.rid, return_logprob=lp is not None,
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
        out: dict[str, list[Any]] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
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


