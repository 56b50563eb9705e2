"""Helpers shared by the OpenAI routes (completions in openai_api.py, chat in openai_chat.py):
errors, sampling-parameter translation, non-streaming runs, the SSE loop and delta tracking."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

from fastapi import Request

from sglite_runtime.entrypoints.http_utils import SSE_DONE, abort_status, error_body, sse
from sglite_runtime.entrypoints.openai_protocol import ChatCompletionRequest, CompletionRequest, SGLangExtras
from sglite_runtime.managers.io_struct import GenerateReqInput


class APIError(Exception):
    """An error with an HTTP status, rendered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def _check_model(tm: Any, model: str | None) -> None:
    if model is not None and model not in (tm.served_model_name, tm.model_path):
        raise APIError(404, f"The model `{model}` does not exist.", "model")


#: Constraint fields of both OpenAI routes: SGLang's names and vLLM's ``guided_*`` aliases,
#: mapped to the native sampling parameter.  At most one may be set.
CONSTRAINT_FIELDS = {"regex": "regex", "json_schema": "json_schema", "ebnf": "ebnf", "guided_json": "json_schema",
                     "guided_regex": "regex", "guided_choice": "choices", "guided_grammar": "ebnf"}


def _constraints(req: SGLangExtras, json_schema: str | None) -> dict[str, Any]:
    """The one native constraint of the request (``json_schema`` comes from response_format
    or the tool choice); a request that sets two is refused naming them."""
    given = {f: getattr(req, f) for f in CONSTRAINT_FIELDS if getattr(req, f) is not None}
    if json_schema is not None:
        given = {"response_format": json_schema, **given}
    if len(given) > 1:
        names = sorted(given)
        raise APIError(400, f"Only one constraint may be set, got {', '.join(names)}.", names[-1])
    out: dict[str, Any] = {}
    for field, value in given.items():
        native = CONSTRAINT_FIELDS.get(field, "json_schema")
        out[native] = json.dumps(value) if native == "json_schema" and isinstance(value, dict) else value
    return out


def _sampling(req: CompletionRequest | ChatCompletionRequest, max_tokens: int | None, json_schema: str | None = None) -> dict:
    sp: dict[str, Any] = {
        "max_new_tokens": max_tokens, "temperature": req.temperature, "top_p": req.top_p, "top_k": req.top_k,
        "min_p": req.min_p, "min_new_tokens": req.min_tokens, "repetition_penalty": req.repetition_penalty,
        "presence_penalty": req.presence_penalty, "frequency_penalty": req.frequency_penalty,
        "stop": req.stop, "stop_token_ids": req.stop_token_ids, "ignore_eos": req.ignore_eos,
        "skip_special_tokens": req.skip_special_tokens, "no_stop_trim": req.no_stop_trim, "n": req.n,
        "seed": req.seed, "logit_bias": req.logit_bias, "stop_regex": req.stop_regex,
        **_constraints(req, json_schema),
    }
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
    out: Any = None
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
    """The stream's first item; a request refused before any token (e.g. a max_tokens below
    the grammar's shortest output, known once it compiled) raises APIError, so a stream
    answers with the HTTP error instead of a 200 that ends empty."""
    try:
        item = await agen.__anext__()
    except StopAsyncIteration:
        return None
    except BaseException:
        await agen.aclose()
        raise
    if isinstance(item, dict) and (bad := abort_status(item["meta_info"])):
        await agen.aclose()
        raise APIError(bad[0], bad[1])
    return item


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
