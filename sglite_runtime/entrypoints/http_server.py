"""The HTTP server: FastAPI app with SGLang's native routes, the OpenAI routes and lifecycle.

    python -m sglite.launch_server --port 30000             # the shipped tiny model
    curl localhost:30000/generate -d '{"text": "Hello", "sampling_params": {"max_new_tokens": 8}}'

Startup: the scheduler and detokenizer are spawned (``launch_subprocesses``) before uvicorn
starts; the TokenizerManager is then created on uvicorn's (uvloop) event loop in the lifespan.
Client mistakes are 400 (never 422/500), a missing/wrong API key 401, and 503 while shutting down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse, Response, StreamingResponse

from sglite_runtime.entrypoints.http_utils import (SSE_DONE, abort_status, error_body, error_response,
                                                   json_response, sse)
from sglite_runtime.entrypoints.metrics import CONTENT_TYPE, ServerMetrics
from sglite_runtime.entrypoints.openai_protocol import AbortRequest, FlushCacheRequest, GenerateRequest
from sglite_runtime.entrypoints.server_lifecycle import GuardMiddleware, ServerState, SglServer, abort, watchdog
from sglite_runtime.managers.io_struct import GenerateReqInput
from sglite_runtime.managers.tokenizer_manager import TokenizerManager
from sglite_runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)

HEALTH_CHECK_TIMEOUT = 20.0


def version() -> str:
    try:
        from importlib.metadata import version as _v

        return _v("sglite")
    except Exception:
        return "0.1.0"


def create_app(server_args: ServerArgs, procs: Any = None) -> FastAPI:
    """Build the app. ``procs`` is the running ``RuntimeProcesses``; the TM is made at startup."""
    state = ServerState(server_args=server_args, procs=procs)
    if server_args.enable_metrics:
        assert server_args.served_model_name is not None  # ServerArgs.__post_init__ defaults it
        state.metrics = ServerMetrics(server_args.served_model_name)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = []
        if procs is not None:
            ready = procs.ready
            state.tm = TokenizerManager(server_args, procs.port_args, ready.context_len, ready.vocab_size,
                                        ready.max_total_num_tokens)
            state.tm.start()
            if not server_args.skip_server_warmup:
                await warmup(state.tm)
            state.tm.metrics = state.metrics  # after the warm-up, which is no client's request
            tasks.append(asyncio.get_running_loop().create_task(watchdog(state)))
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()

    app = FastAPI(title="sglite", version=version(), lifespan=lifespan)
    app.state.sg = state
    _install_error_handlers(app)
    _add_native_routes(app, state)
    from sglite_runtime.entrypoints.openai_api import add_openai_routes

    add_openai_routes(app, state)
    from sglite_runtime.entrypoints.program_api import install_program_routes

    install_program_routes(app)
    app.add_middleware(GuardMiddleware, state=state, api_key=server_args.api_key)
    return app


# ---- errors ----------------------------------------------------------------------------------------
def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and ctype and "json" not in ctype.lower():
            msg = "Unsupported Media Type: Only 'application/json' is allowed"
            return error_response(msg, 400, request.url.path)
        return error_response(_validation_message(exc), 400, request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(str(exc.detail), exc.status_code, request.url.path)

    @app.exception_handler(ValueError)
    async def _value(request: Request, exc: ValueError) -> Response:
        return error_response(str(exc), 400, request.url.path)

    @app.exception_handler(RecursionError)
    async def _deep(request: Request, exc: RecursionError) -> Response:
        return error_response("The request is nested too deeply.", 400, request.url.path)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        # A bug, or a runtime that died under the request: a 5xx that says what happened.
        logger.exception("internal error on %s", request.url.path)
        return error_response(f"Internal server error: {exc!r}", 500, request.url.path)


def _validation_message(exc: RequestValidationError) -> str:
    errs = exc.errors()
    if not errs:
        return "Invalid request."
    e = errs[0]
    if e.get("type") == "json_invalid":
        return "The request body is not valid JSON."
    loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
    if e.get("type") == "extra_forbidden":
        return f"{loc!r} is not supported by this server (unsupported field)."
    if not loc:
        return f"The request body must be a JSON object: {e.get('msg', 'invalid')}."
    return f"Invalid field {loc!r}: {e.get('msg', 'invalid')}."


# ---- native routes --------------------------------------------------------------------------------
def _to_input(req: GenerateRequest) -> GenerateReqInput:
    return GenerateReqInput(
        text=req.text, input_ids=req.input_ids, sampling_params=req.sampling_params, rid=req.rid,
        return_logprob=req.return_logprob, logprob_start_len=req.logprob_start_len,
        top_logprobs_num=req.top_logprobs_num, return_text_in_logprobs=req.return_text_in_logprobs,
        stream=req.stream, image_data=req.image_data)


async def stream_after_first(agen: Any) -> tuple[Any, Any]:
    """Run the generator to its first item so that input errors surface before the SSE starts."""
    try:
        first = await agen.__anext__()
    except StopAsyncIteration:
        first = None
    return first, agen


def _add_native_routes(app: FastAPI, state: ServerState) -> None:
    @app.post("/generate")
    async def generate(req: GenerateRequest, request: Request) -> Response:
        # Only HTTP concerns here: the TokenizerManager validates every field, for every entry.
        agen = state.tm.generate_request(_to_input(req), request)
        try:
            first, agen = await stream_after_first(agen)
        except asyncio.CancelledError:
            await agen.aclose()
            return Response(status_code=499)
        except ValueError as e:
            await agen.aclose()
            return error_response(str(e), 400, "/generate")
        if isinstance(first, dict) and (bad := abort_status(first["meta_info"])):
            # Refused before any token (e.g. by the scheduler once the grammar compiled): a real
            # HTTP error, streamed or not.
            await agen.aclose()
            return error_response(bad[1], bad[0], "/generate")
        if not req.stream:
            await agen.aclose()
            return json_response(first)
        return StreamingResponse(_generate_sse(first, agen), media_type="text/event-stream")

    @app.api_route("/get_model_info", methods=["GET", "POST"])
    async def get_model_info() -> Response:
        return json_response(state.tm.model_info())

    # sglang-router >= 0.3 probes /model_info first (then falls back to /get_model_info with a warning).
    app.add_api_route("/model_info", get_model_info, methods=["GET", "POST"])

    async def server_info() -> Response:
        internal = await state.tm.get_internal_state()
        # pid: launch_server() checks it is talking to the process it started, not an older server.
        return json_response(state.tm.server_args_dict() | {"internal_states": [internal], "version": version(),
                                                             "pid": os.getpid()})

    app.add_api_route("/server_info", server_info, methods=["GET"])
    app.add_api_route("/get_server_info", server_info, methods=["GET"])

    @app.api_route("/flush_cache", methods=["GET", "POST"])
    async def flush_cache(body: FlushCacheRequest | None = None) -> Response:
        out = await state.tm.flush_cache(empty_cache=bool(body and body.empty_cache))
        if out.success:
            return PlainTextResponse("Cache flushed.\nPlease check backend logs for more details.\n")
        msg = out.message or "Cache not flushed: there are running or waiting requests."
        return PlainTextResponse(msg, status_code=400)

    @app.get("/health")
    async def health() -> Response:
        if not state.healthy():
            return PlainTextResponse("unhealthy", status_code=503)
        return PlainTextResponse("", status_code=200)

    app.add_api_route("/ping", health, methods=["GET"], include_in_schema=False)

    @app.get("/health_generate")
    async def health_generate() -> Response:
        # A real one-token generation with its own rid: only this probe's output counts.
        if not state.healthy() or state.tm is None:
            return PlainTextResponse("unhealthy", status_code=503)
        tm = state.tm
        rid = f"health-{uuid.uuid4().hex}"
        obj = GenerateReqInput(input_ids=[_probe_token(tm)], rid=rid,
                               sampling_params={"max_new_tokens": 1, "temperature": 0.0})
        try:
            async def run() -> Any:
                out = None
                async for out in tm.generate_request(obj):
                    pass
                return out

            out = await asyncio.wait_for(run(), HEALTH_CHECK_TIMEOUT)
        except Exception as e:
            logger.error("health_generate failed: %r", e)
            return PlainTextResponse("unhealthy", status_code=503)
        if not state.healthy() or not isinstance(out, dict) or out["meta_info"].get("completion_tokens", 0) < 1:
            return PlainTextResponse("unhealthy", status_code=503)
        return PlainTextResponse("", status_code=200)

    @app.post("/abort_request")
    async def abort_request(body: AbortRequest) -> Response:
        if not body.rid and not body.abort_all:
            raise ValueError("Send a rid or abort_all=true.")
        abort(state.tm, body.rid, body.abort_all)
        return json_response({"success": True})

    @app.get("/get_load")
    async def get_load() -> Response:
        s = await state.tm.get_internal_state()
        pool = s.get("kv_pool", {})
        used = pool.get("total", 0) - pool.get("available", 0) - pool.get("evictable", 0)
        return json_response([{"dp_rank": 0, "num_reqs": s.get("num_running_reqs", 0) + s.get("num_waiting_reqs", 0),
                               "num_running_reqs": s.get("num_running_reqs", 0),
                               "num_waiting_reqs": s.get("num_waiting_reqs", 0), "num_tokens": used,
                               "token_usage": used / max(pool.get("total", 1), 1)}])

    @app.get("/metrics")
    async def metrics() -> Response:
        if state.metrics is None:
            return error_response("Metrics are disabled (start with --enable-metrics).", 404, "/metrics")
        if state.tm is not None and state.healthy():
            try:
                state.metrics.refresh(await state.tm.get_internal_state())
            except Exception as e:  # a scrape must still answer with the counters
                logger.warning("could not refresh gauges: %r", e)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)


async def warmup(tm: TokenizerManager) -> None:
    """One tiny generation before the server listens (uvicorn binds after the lifespan starts),
    so the first client does not pay for first-call costs; then the prefix cache is emptied so
    that no client sees the warm-up as cached tokens. Raises if the runtime cannot generate."""
    obj = GenerateReqInput(input_ids=[_probe_token(tm)], rid=f"warmup-{uuid.uuid4().hex}",
                           sampling_params={"max_new_tokens": 2, "temperature": 0.0, "ignore_eos": True})
    out = None
    async for out in tm.generate_request(obj):
        pass
    if not isinstance(out, dict) or out["meta_info"].get("completion_tokens", 0) < 1:
        raise RuntimeError(f"server warm-up failed: {out!r}")
    await tm.flush_cache()
    logger.info("warm-up generation done")


def _probe_token(tm: TokenizerManager) -> int:
    ids = tm.tokenizer.encode("Hi", add_special_tokens=False)
    return int(ids[0]) if ids else 0


def _sse_chunk(chunk: Any) -> list[str]:
    lines = [sse(chunk)]
    for c in chunk if isinstance(chunk, list) else [chunk]:
        if isinstance(c, dict) and (bad := abort_status(c.get("meta_info", {}))):
            # The runtime failed this request mid-stream: say so in band, with its status.
            lines.append(sse(error_body(bad[1], bad[0], False)))
    return lines


async def _generate_sse(first: Any, agen: Any) -> AsyncIterator[str]:
    try:
        if first is not None:
            for line in _sse_chunk(first):
                yield line
        async for chunk in agen:
            for line in _sse_chunk(chunk):
                yield line
    except asyncio.CancelledError:
        raise
    except Exception as e:  # mid-stream: the status line is already sent, so report in-band
        logger.exception("error while streaming /generate")
        yield sse(error_body(str(e) or type(e).__name__, 400 if isinstance(e, ValueError) else 500, False))
    finally:
        await agen.aclose()  # aborts the request if it is still running (disconnect, cancel)
    yield SSE_DONE


# ---- launch ---------------------------------------------------------------------------------------
def launch_server(server_args: ServerArgs) -> None:
    """Run the server until SIGTERM/SIGINT (exit 0 after draining) or a child's death (exit 1)."""
    import uvicorn

    from sglite_runtime.entrypoints.launcher import launch_subprocesses
    from sglite_runtime.entrypoints.process_utils import setup_logging

    setup_logging(server_args.log_level)
    procs = launch_subprocesses(server_args)
    exit_code = 1
    try:
        app = create_app(server_args, procs)
        state: ServerState = app.state.sg
        loop = "uvloop" if _has_uvloop() else "asyncio"
        config = uvicorn.Config(app, host=server_args.host, port=server_args.port, loop=loop,
                                log_level=server_args.log_level.lower(), timeout_keep_alive=5,
                                timeout_graceful_shutdown=5, access_log=server_args.log_requests)
        server = SglServer(config, state)
        logger.info("sglite %s serving %s at http://%s:%d", version(), server_args.served_model_name,
                    server_args.host, server_args.port)
        server.run()
        exit_code = state.exit_code
        if not server.started:
            exit_code = 1
    finally:
        procs.shutdown()
    logger.info("server exited with code %d", exit_code)
    sys.exit(exit_code)


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401

        return True
    except ImportError:
        return False
