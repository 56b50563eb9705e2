"""How ``sglite.Engine`` runs a call on its private event loop and waits for it.

A call is a coroutine started on the engine's loop thread. The caller (a plain thread or an
asyncio task on another loop) waits in short slices so that it notices a dead worker process
within a poll interval instead of waiting forever, and so that Ctrl-C, an exception or a
cancelled ``await`` cancels exactly that coroutine (whose ``finally`` aborts its requests).
User mistakes come back as one-line ``ValueError``s with the engine's frames cut off.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable

POLL_S = 0.25
CANCEL_WAIT_S = 5.0


class EngineDeadError(RuntimeError):
    """The engine was shut down, or one of its worker processes died; make a new ``Engine``."""


class _Call:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.done = threading.Event()
        self.task: asyncio.Task | None = None

    def cancel(self, wait: bool) -> None:
        """Cancel the coroutine; with ``wait``, block until it has run its ``finally`` blocks."""
        self.future.cancel()
        try:
            self.loop.call_soon_threadsafe(self._cancel_task)
        except RuntimeError:  # the loop is closed: nothing runs any more
            return
        if wait:
            self.done.wait(CANCEL_WAIT_S)

    def _cancel_task(self) -> None:
        if self.task is not None:
            self.task.cancel()


def submit(coro: Any, loop: asyncio.AbstractEventLoop) -> _Call:
    """Start ``coro`` on ``loop`` (another thread's); return a handle to wait on or cancel."""
    call = _Call(loop)

    def start() -> None:
        if call.future.cancelled():  # cancelled before it started: nothing was sent
            coro.close()
            call.done.set()
            return
        call.task = loop.create_task(coro)
        call.task.add_done_callback(finish)

    def finish(task: asyncio.Task) -> None:
        call.done.set()
        if call.future.done():
            return
        try:
            if task.cancelled():
                call.future.cancel()
            elif task.exception() is not None:
                call.future.set_exception(task.exception())
            else:
                call.future.set_result(task.result())
        except concurrent.futures.InvalidStateError:  # cancelled by the caller meanwhile
            pass

    loop.call_soon_threadsafe(start)
    return call


def wait_sync(call: _Call, dead_reason: Callable[[], str | None]) -> Any:
    """Wait for ``call`` from a plain thread (Ctrl-C cancels it)."""
    try:
        while True:
            try:
                return call.future.result(POLL_S)
            except concurrent.futures.TimeoutError:
                if call.future.done():
                    raise  # the coroutine itself timed out
                reason = dead_reason()
                if reason is not None:
                    raise EngineDeadError(reason) from None
    except ValueError as e:  # the caller's mistake: the message says it all, engine frames are noise
        raise e.with_traceback(None) from None
    except BaseException:
        if not call.future.done():
            call.cancel(wait=True)
        raise


async def wait_async(call: _Call, dead_reason: Callable[[], str | None]) -> Any:
    """Wait for ``call`` from a task on another event loop (cancelling the task cancels it)."""
    afut = asyncio.wrap_future(call.future)
    try:
        while True:
            done, _ = await asyncio.wait({afut}, timeout=POLL_S)
            if done:
                return afut.result()
            reason = dead_reason()
            if reason is not None:
                raise EngineDeadError(reason)
    except ValueError as e:
        raise e.with_traceback(None) from None
    except BaseException:
        if not call.future.done():
            call.cancel(wait=False)
        raise


def check_outputs(out: Any) -> Any:
    """Raise for requests the runtime rejected after scheduling them (e.g. a grammar it cannot
    compile): ``ValueError`` for the caller's mistakes (4xx), ``RuntimeError`` otherwise; the
    HTTP server answers the same cases with that status code."""
    for item in out if isinstance(out, list) else [out]:
        fr = (item.get("meta_info") or {}).get("finish_reason") if isinstance(item, dict) else None
        if isinstance(fr, dict) and fr.get("type") == "abort" and fr.get("status_code"):
            message = str(fr.get("message") or "The request was aborted.")
            if 400 <= int(fr["status_code"]) < 500:
                raise ValueError(message)
            raise RuntimeError(message)
    return out
