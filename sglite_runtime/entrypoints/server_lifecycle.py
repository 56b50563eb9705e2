"""Server life cycle: shared state, the API-key/drain guard, the child watchdog and SIGTERM drain.

- ``GuardMiddleware`` is pure ASGI (no BaseHTTPMiddleware) so that ``request.is_disconnected()``
  and streaming cancellation keep working; it checks the API key (sha256 digests compared in
  constant time), answers 503 to new requests while shutting down, and counts in-flight requests.
- ``watchdog`` polls the child processes; when one dies, ``/health`` turns 503 and the server
  exits non-zero after a short grace, taking the remaining children down (no orphans).
- ``SglServer`` replaces uvicorn's signal handling: SIGTERM/SIGINT start a drain (503 for new
  requests, wait up to ``--graceful-timeout`` for in-flight ones, abort the rest), then exit 0.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

# Routes a load balancer or Prometheus must reach without the key, and that never count as load.
PUBLIC_PATHS = frozenset({"/health", "/health_generate", "/metrics", "/ping"})
WATCHDOG_INTERVAL = 0.5
DEAD_CHILD_GRACE = 1.0


@dataclass
class ServerState:
    """Everything the routes share; lives on ``app.state.sg``."""

    server_args: Any
    procs: Any = None  # RuntimeProcesses
    tm: Any = None  # TokenizerManager, created on uvicorn's loop
    metrics: Any = None
    server: Any = None  # the uvicorn.Server, to ask it to exit
    shutting_down: bool = False
    dead: bool = False
    exit_code: int = 0
    inflight: int = 0

    def healthy(self) -> bool:
        return not self.shutting_down and not self.dead and (self.procs is None or self.procs.alive())


def abort(tm: Any, rid: str = "", abort_all: bool = False) -> None:
    """Abort in the scheduler (the exact rid, or all) but keep the waiters, so they receive
    ``finish_reason: abort`` instead of waiting forever for a request that will not finish."""
    tm.abort_request(rid, abort_all, keep_waiters=True)


class GuardMiddleware:
    """Pure ASGI guard: API key, 503 while shutting down, in-flight accounting."""

    def __init__(self, app: Any, state: ServerState, api_key: str | None):
        self.app = app
        self.state = state
        self.key_digest = hashlib.sha256(api_key.encode()).digest() if api_key else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        public = path in PUBLIC_PATHS or scope.get("method") == "OPTIONS"
        if self.key_digest is not None and not public and not self._authorized(scope):
            await _send_json(send, 401, {"error": "Unauthorized"})
            return
        if public:
            await self.app(scope, receive, send)
            return
        if self.state.shutting_down or self.state.dead:
            body = {"error": {"message": "The server is shutting down.", "type": "ServiceUnavailableError",
                              "param": None, "code": 503}}
            await _send_json(send, 503, body)
            return
        limit = self.state.server_args.max_request_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _send_json(send, 413, _too_large(limit))
            return
        self.state.inflight += 1
        try:
            await self.app(scope, _limited_receive(receive, limit), send)
        except BodyTooLarge:
            # Raised while the handler read the body: nothing was parsed or sent yet.
            await _send_json(send, 413, _too_large(limit))
        finally:
            self.state.inflight -= 1

    def _authorized(self, scope: dict) -> bool:
        header = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value
                break
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer":
            token = b""
        # Compare digests so the comparison time depends on neither the key nor its length.
        assert self.key_digest is not None  # only asked when an API key is set
        return secrets.compare_digest(hashlib.sha256(token.strip()).digest(), self.key_digest)


class BodyTooLarge(HTTPException):
    """The request body grew past --max-request-body-bytes while being read (an HTTPException,
    so FastAPI's body parsing passes it on as a 413 instead of "error parsing the body")."""

    def __init__(self, limit: int):
        super().__init__(413, _too_large(limit)["error"]["message"])


def _too_large(limit: int) -> dict:
    return {"error": {"message": f"The request body is larger than {limit} bytes (--max-request-body-bytes).",
                      "type": "RequestEntityTooLarge", "param": None, "code": 413}}


def _content_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _limited_receive(receive: Any, limit: int) -> Any:
    """Count body bytes as they arrive (a chunked body has no Content-Length to check)."""
    seen = 0

    async def wrapped() -> dict:
        nonlocal seen
        message = await receive()
        if message.get("type") == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return wrapped


async def _send_json(send: Any, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def watchdog(state: ServerState) -> None:
    """Exit non-zero (after a short grace) when a child process dies."""
    while True:
        await asyncio.sleep(WATCHDOG_INTERVAL)
        if state.procs is None or state.procs.alive() or state.shutting_down:
            continue
        state.dead = True
        logger.error("runtime child process died: %s; shutting down", ", ".join(state.procs.dead_children()))
        if state.tm is not None:
            # Their requests can never finish: answer them with a 5xx now, while we still can.
            state.tm.fail_all()
        await asyncio.sleep(DEAD_CHILD_GRACE)  # let /health report 503 to whoever is polling
        state.exit_code = 1
        await asyncio.to_thread(state.procs.shutdown)
        if state.server is not None:
            # Waiting requests can never finish now: don't wait for their connections.
            state.server.force_exit = True
            state.server.should_exit = True
        return


async def drain(state: ServerState, timeout: float) -> None:
    """Stop taking requests, let in-flight ones finish up to ``timeout`` s, abort the rest, exit."""
    state.shutting_down = True
    logger.info("shutdown requested: draining %d in-flight request(s) for up to %.0f s", state.inflight, timeout)
    deadline = time.monotonic() + timeout
    while state.inflight > 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    if state.inflight > 0 and state.tm is not None:
        logger.warning("graceful timeout reached: aborting %d request(s)", state.inflight)
        abort(state.tm, abort_all=True)
        deadline = time.monotonic() + 5.0
        while state.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    if state.server is not None:
        state.server.should_exit = True
        if state.inflight > 0:
            state.server.force_exit = True


class SglServer(uvicorn.Server):
    """uvicorn.Server whose first SIGTERM/SIGINT drains instead of closing sockets at once.

    The signal is not re-raised after ``run()`` (uvicorn's default), so a drained server exits 0.
    """

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state
        state.server = self
        self._drain_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._loop is None or self.state.shutting_down:
            # A second signal (or one before startup finished): stop now.
            self.should_exit = True
            if self.state.shutting_down:
                self.force_exit = True
            return
        timeout = float(self.state.server_args.graceful_timeout)
        self._loop.call_soon_threadsafe(self._start_drain, timeout)

    def _start_drain(self, timeout: float) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(drain(self.state, timeout))
