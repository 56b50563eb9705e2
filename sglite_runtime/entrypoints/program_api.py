"""``POST /run_program``: run compiled request graphs inside the server (one round trip).

Body: ``{"graph": {...}, "sampling_params": {...}, "stream": bool}`` for one
program, or ``{"graphs": [...], "sampling_params": {...}}`` for a batch.

* one graph, ``stream: false`` -> ``{"events": [...]}`` (no text deltas);
* one graph, ``stream: true`` -> SSE ``data: {event}`` lines, then ``data: [DONE]``;
* a batch -> ``{"results": [{"events": [...]}, ...]}`` in input order.

A malformed or oversized graph is a 400 ``{"error": {"message": ...}}`` before
anything runs; a client that disconnects cancels the program and its requests.

Behind sglang-router (which forwards only /generate and /v1): every response carries
``X-Sglite-Worker-Id`` and ``GET /program_info`` returns that id, so a client can send a
prefill of the program's prefix through the router (its cache-aware placement), read
which replica took it, and post the graph to that replica (sglite/backend/program_routing.py).
"""
from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, AsyncGenerator, AsyncIterator

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from sglite_runtime.entrypoints.http_utils import SSE_DONE, error_body, error_response, json_response, sse
from sglite_runtime.managers.program_executor import ProgramExecutor

logger = logging.getLogger(__name__)

PATH = "/run_program"
MAX_BATCH = 4096
WORKER_ID_HEADER = "x-sglite-worker-id"

program_router = APIRouter()


class WorkerIdMiddleware:
    """Adds ``X-Sglite-Worker-Id`` to every HTTP response (a pure ASGI middleware: no buffering)."""

    def __init__(self, app: Any, worker_id: str) -> None:
        self.app = app
        self.header = (WORKER_ID_HEADER.encode(), worker_id.encode())

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_id(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = dict(message, headers=list(message.get("headers", [])) + [self.header])
            await send(message)

        await self.app(scope, receive, send_with_id)


def install_program_routes(app: Any) -> None:
    """``/run_program``, ``/program_info`` and the worker-id header on ``app``."""
    app.state.worker_id = uuid.uuid4().hex
    app.include_router(program_router)
    app.add_middleware(WorkerIdMiddleware, worker_id=app.state.worker_id)


@program_router.get("/program_info")
async def program_info(request: Request) -> Response:
    """What a client needs to send compiled programs here (directly or past a router)."""
    return json_response({"run_program": PATH, "worker_id": request.app.state.worker_id,
                          "max_batch": MAX_BATCH})


def _executor(request: Request) -> ProgramExecutor:
    app_state = request.app.state
    ex = getattr(app_state, "program_executor", None)
    tm = app_state.sg.tm
    if ex is None or ex.tm is not tm:
        ex = ProgramExecutor(tm)
        app_state.program_executor = ex
    return ex


_BODY_FIELDS = {"graph", "graphs", "sampling_params", "stream"}


async def _body(request: Request) -> dict[str, Any]:
    raw = await request.body()  # its size is bounded while reading (--max-request-body-bytes)
    import json

    try:
        body = json.loads(raw or b"null")
    except ValueError:
        raise ValueError("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ValueError("The request body must be a JSON object.")
    unknown = sorted(set(body) - _BODY_FIELDS)
    if unknown:  # a typo (``sampling_param``) would otherwise be dropped silently
        raise ValueError(f"Unknown field(s) {', '.join(map(repr, unknown))}; expected {sorted(_BODY_FIELDS)}.")
    if not isinstance(body.get("stream", False), bool):  # strict: "yes" is not true
        raise ValueError(f"stream must be a boolean, got {body['stream']!r:.60}.")
    if ("graph" in body) == ("graphs" in body):
        raise ValueError("Send exactly one of 'graph' or 'graphs'.")
    if "graphs" in body:
        if not isinstance(body["graphs"], list) or not 0 < len(body["graphs"]) <= MAX_BATCH:
            raise ValueError(f"'graphs' must be a list of 1..{MAX_BATCH} graphs.")
        if body.get("stream"):
            raise ValueError("Streaming is available for a single 'graph' only.")
    return body


@program_router.post(PATH)
async def run_program(request: Request) -> Response:
    """Run one compiled program (optionally streaming events) or a batch of them."""
    try:
        body = await _body(request)
        ex = _executor(request)
        defaults = body.get("sampling_params")
        if "graphs" in body:
            for g in body["graphs"]:
                ex.validate(g, defaults)
        else:
            ex.validate(body["graph"], defaults)
    except ValueError as e:
        return error_response(str(e), 400, PATH)
    try:
        if "graphs" in body:
            results = await ex.run_batch(body["graphs"], defaults, request)
            return json_response({"results": results})
        if not body.get("stream"):
            return json_response(await ex.collect(body["graph"], defaults, request))
    except asyncio.CancelledError:
        return Response(status_code=499)
    except ValueError as e:
        return error_response(str(e), 400, PATH)
    return StreamingResponse(_sse(ex.run(body["graph"], defaults, True, request)),
                             media_type="text/event-stream")


async def _sse(agen: AsyncGenerator[dict[str, Any], None]) -> AsyncIterator[str]:
    try:
        async for ev in agen:
            yield sse(ev)
    except asyncio.CancelledError:
        raise
    except Exception as e:  # the status line is sent already: report in band
        logger.exception("error while streaming /run_program")
        yield sse(error_body(str(e) or type(e).__name__, 400 if isinstance(e, ValueError) else 500, False))
    finally:
        await agen.aclose()  # cancels the program's streams and aborts their requests
    yield SSE_DONE
