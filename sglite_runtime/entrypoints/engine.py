"""sglite.Engine: the runtime without HTTP, for scripts and notebooks.

The engine runs the same processes as the server (scheduler and detokenizer as children, the
TokenizerManager here on a private event-loop thread), so offline results equal served ones.

    with sglite.Engine() as llm:                    # the shipped tiny model
        out = llm.generate("The list", {"max_new_tokens": 16, "temperature": 0})
        print(out["text"], out["meta_info"]["finish_reason"])
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from typing import Any, AsyncGenerator, Iterator

from sglite_runtime.entrypoints.engine_calls import EngineDeadError, check_outputs, submit, wait_async, wait_sync
from sglite_runtime.entrypoints.launcher import RuntimeProcesses, launch_subprocesses
from sglite_runtime.entrypoints.process_utils import LOG_LEVEL_ENV, set_log_level, validate_model_path
from sglite_runtime.managers.io_struct import GenerateReqInput
from sglite_runtime.managers.tokenizer_manager import TokenizerManager
from sglite_runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)

__all__ = ["Engine", "EngineDeadError"]


class Engine:
    """An offline LLM engine. Keyword arguments are ServerArgs fields (SGLang's names).

    Args:
        model_path: a local HF model folder (or a Hub id); the shipped ``sglite-tiny`` when None.
        log_level: how much sglite logs: the level of the engine's worker processes and of the
            ``sglite``/``sglite_runtime`` loggers in this process (default: the
            ``SGLITE_LOG_LEVEL`` environment variable, else ``"warning"``). The engine never
            touches the root logger or your handlers.
        **kwargs: any other ServerArgs field, e.g. ``max_total_tokens=4096``,
            ``disable_radix_cache=True``, ``chunked_prefill_size=256``.

    Every call raises :class:`EngineDeadError` at once after :meth:`shutdown`, and within a
    second or so when a worker process dies (mid-call too). Ctrl-C (KeyboardInterrupt),
    leaving a stream early, or cancelling an ``await`` aborts exactly that call's requests.
    """

    def __init__(self, model_path: str | None = None, log_level: str | None = None, **kwargs: Any):
        self._procs: RuntimeProcesses | None = None  # so shutdown()/__del__ work if __init__ fails
        self._dead: str | None = None
        self._calls: dict[int, set] = {}  # thread id -> the calls it waits on (see cancel_calls)
        if model_path is not None:
            validate_model_path(model_path)
            kwargs["model_path"] = model_path
        explicit = log_level or os.environ.get(LOG_LEVEL_ENV)
        log_level = (explicit or "warning").lower()
        if explicit:
            set_log_level(log_level)
        self.server_args = ServerArgs(log_level=log_level, **kwargs)
        self._procs = launch_subprocesses(self.server_args)
        ready = self._procs.ready
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sglite-engine-loop", daemon=True)
        self._thread.start()
        self.tokenizer_manager = self._run(self._make_tm(ready))
        self.tokenizer = self.tokenizer_manager.tokenizer
        atexit.register(self.shutdown)

    async def _make_tm(self, ready: Any) -> TokenizerManager:
        assert self._procs is not None  # launched before the manager is made
        tm = TokenizerManager(self.server_args, self._procs.port_args, ready.context_len, ready.vocab_size,
                              ready.max_total_num_tokens)  # requests that can never fit the KV pool: ValueError
        tm.start()
        return tm

    # ---- calls into the engine loop: fail fast when dead, abort on Ctrl-C ---------------------------
    def _alive_reason(self) -> str | None:
        """None while usable, else why not (and the engine is then marked dead)."""
        if self._dead is not None:
            return self._dead
        if self._procs is None:
            return "this sglite.Engine has been shut down; create a new Engine"
        dead = self._procs.dead_children()
        if dead:
            codes = ", ".join(f"{p.name} (exit code {p.exitcode})" for p in self._procs.procs if not p.is_alive())
            self._dead = f"the sglite.Engine's worker process died: {codes}; create a new Engine"
            logger.error("%s", self._dead)
            threading.Thread(target=self.shutdown, name="sglite-engine-reaper", daemon=True).start()
            return self._dead
        return None

    def _check(self, coro: Any = None) -> None:
        reason = self._alive_reason()
        if reason is not None:
            if coro is not None:
                coro.close()  # never started: no "was never awaited" warning
            raise EngineDeadError(reason)

    def _run(self, coro: Any) -> Any:
        self._check(coro)
        call, ident = submit(coro, self.loop), threading.get_ident()
        self._calls.setdefault(ident, set()).add(call)
        try:
            return wait_sync(call, self._alive_reason)
        finally:
            mine = self._calls.get(ident, set())
            mine.discard(call)
            if not mine:  # only this thread adds to its own set
                self._calls.pop(ident, None)

    def cancel_calls(self, thread_ids: list[int]) -> None:
        """Cancel the calls that these threads are waiting on (their requests are aborted and the
        calls raise ``CancelledError``). The frontend uses it when Ctrl-C interrupts a program
        whose generations run on worker threads."""
        for ident in thread_ids:
            for call in list(self._calls.get(ident, ())):
                call.cancel(wait=False)

    async def _await(self, coro: Any) -> Any:
        self._check(coro)
        return await wait_async(submit(coro, self.loop), self._alive_reason)

    # ---- generation ---------------------------------------------------------------------------
    @staticmethod
    def _make_input(prompt, sampling_params, input_ids, return_logprob, logprob_start_len, top_logprobs_num,
                    stream, rid, return_text_in_logprobs) -> GenerateReqInput:
        return GenerateReqInput(
            text=prompt, input_ids=input_ids, sampling_params=sampling_params, rid=rid,
            return_logprob=return_logprob, logprob_start_len=logprob_start_len,
            top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs, stream=stream)

    def generate(
        self,
        prompt: str | list[str] | None = None,
        sampling_params: dict | list[dict] | None = None,
        input_ids: list[int] | list[list[int]] | None = None,
        return_logprob: bool = False,
        logprob_start_len: int | None = None,
        top_logprobs_num: int | None = None,
        stream: bool = False,
        rid: str | list[str] | None = None,
        return_text_in_logprobs: bool = False,
    ) -> dict | list[dict] | Iterator[dict]:
        """Generate for one prompt (returns a dict) or a list (returns a list, in order).

        The result is ``{"text", "output_ids", "meta_info": {"id", "finish_reason",
        "prompt_tokens", "completion_tokens", "cached_tokens", ...}}``. With ``stream=True``,
        returns an iterator of chunks whose ``text`` and ``output_ids`` are the new part only.
        Invalid input raises ``ValueError``.
        """
        obj = self._make_input(prompt, sampling_params, input_ids, return_logprob, logprob_start_len,
                               top_logprobs_num, stream, rid, return_text_in_logprobs)
        self._check()
        if stream:
            return self._sync_stream(obj)
        return self._run(self._collect(obj))

    async def _collect(self, obj: GenerateReqInput) -> Any:
        out = None
        async for out in self.tokenizer_manager.generate_request(obj):
            pass
        return check_outputs(out)

    def _sync_stream(self, obj: GenerateReqInput) -> Iterator[dict]:
        return self._sync_iter(_incremental(self.tokenizer_manager.generate_request(obj)))

    def _sync_iter(self, agen: AsyncGenerator[dict, None]) -> Iterator[dict]:
        # Leaving the loop early (break, an exception, Ctrl-C) closes the generator on the engine
        # loop, which aborts the requests that are still running.
        try:
            while True:
                try:
                    yield self._run(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if self._alive_reason() is None:
                self._run(agen.aclose())

    async def async_generate(self, prompt=None, sampling_params=None, input_ids=None, return_logprob=False,
                             logprob_start_len=None, top_logprobs_num=None, stream=False, rid=None,
                             return_text_in_logprobs=False) -> Any:
        """Like ``generate`` from asyncio code; with ``stream=True`` returns an async iterator."""
        obj = self._make_input(prompt, sampling_params, input_ids, return_logprob, logprob_start_len,
                               top_logprobs_num, stream, rid, return_text_in_logprobs)
        self._check()
        if stream:
            return self._async_stream(obj)
        return await self._await(self._collect(obj))

    async def _async_stream(self, obj: GenerateReqInput) -> AsyncGenerator[dict, None]:
        agen = _incremental(self.tokenizer_manager.generate_request(obj))
        try:
            while True:
                try:
                    yield await self._await(agen.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if self._alive_reason() is None:
                await self._await(agen.aclose())

    # ---- compiled programs ----------------------------------------------------------------------
    def run_program(self, graph_dict: dict | list[dict], sampling_params: dict | None = None,
                    stream: bool = False) -> Any:
        """Run a compiled request graph (``CompiledProgram.graph.to_dict()``) in this engine.

        Returns ``{"events": [...]}``; with ``stream=True`` an iterator of events (text deltas
        included; closing it aborts the program); with a list of graphs, a list of results
        (run concurrently). A malformed graph raises ``ValueError`` before anything runs.
        """
        from sglite_runtime.managers.program_executor import ProgramExecutor

        self._check()
        if getattr(self, "_program_executor", None) is None:
            self._program_executor = ProgramExecutor(self.tokenizer_manager)
        ex = self._program_executor
        if isinstance(graph_dict, list):
            return self._run(ex.run_batch(graph_dict, sampling_params))
        try:
            ex.validate(graph_dict, sampling_params)
        except ValueError as e:
            raise e.with_traceback(None) from None  # the message says it all; the frames are noise
        if not stream:
            return self._run(ex.collect(graph_dict, sampling_params))
        return self._sync_iter(ex.run(graph_dict, sampling_params, stream=True))

    # ---- control --------------------------------------------------------------------------------
    def flush_cache(self) -> bool:
        """Drop the radix cache. False while requests are running."""
        return self._run(self.tokenizer_manager.flush_cache()).success

    def get_server_info(self) -> dict:
        state = self._run(self.tokenizer_manager.get_internal_state())
        return self.tokenizer_manager.server_args_dict() | {"internal_states": [state], "version": "0.1.0"}

    def get_model_info(self) -> dict:
        self._check()
        return self.tokenizer_manager.model_info()

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        self._check()
        self.loop.call_soon_threadsafe(self.tokenizer_manager.abort_request, rid, abort_all)

    def shutdown(self) -> None:
        """Stop the engine's processes. Safe to call twice; later calls raise EngineDeadError."""
        procs, self._procs = self._procs, None
        if procs is None:
            return
        procs.shutdown()
        if not self.loop.is_closed() and self._thread.is_alive():
            try:
                submit(self.tokenizer_manager.close(), self.loop).future.result(5)
            except Exception:  # the loop may already be gone at interpreter exit
                pass
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()

    def __del__(self) -> None:
        try:
            self.shutdown()
        except Exception:
            pass


async def _incremental(agen: AsyncGenerator[dict, None]) -> AsyncGenerator[dict, None]:
    """Turn cumulative stream chunks into deltas (text and output_ids), per batch index."""
    sent_text: dict[int, int] = {}
    sent_ids: dict[int, int] = {}
    try:
        async for chunk in agen:
            check_outputs(chunk)
            i = chunk.get("index", 0)
            text, ids = chunk["text"], chunk["output_ids"]
            yield {**chunk, "text": text[sent_text.get(i, 0):], "output_ids": ids[sent_ids.get(i, 0):]}
            sent_text[i], sent_ids[i] = len(text), len(ids)
    finally:
        await agen.aclose()  # aborts what is still running (the caller left early)
