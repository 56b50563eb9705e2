"""TokenizerManager: the front of the runtime, living in the HTTP (or Engine) process.

It validates and tokenizes requests, sends them to the scheduler, and fans the detokenizer's
outputs back to the waiting coroutines (``rid → ReqState``). Every failure a client can cause
is raised as ``ValueError`` before anything is scheduled, so the HTTP layer answers 400.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import logging
import time
import uuid
from typing import Any, AsyncGenerator, Callable, Protocol, cast

import zmq
import zmq.asyncio

from sglite_runtime.managers.io_struct import (
    AbortReq,
    BatchStrOut,
    FinishAbort,
    FlushCacheReq,
    FlushCacheReqOutput,
    GenerateReqInput,
    GetInternalStateReq,
    GetInternalStateReqOutput,
    TokenizedGenerateReqInput,
    decode,
    encode,
    has_grammar,
    input_chars,
    single_rid,
)
from sglite_runtime.managers.req_state import ReqState, format_output
from sglite_runtime.managers.request_validation import MAX_N, check_generate_input
from sglite_runtime.sampling.sampling_params import SamplingParams, check_context_length, check_unicode
from sglite_runtime.server_args import ServerArgs
from sglite_runtime.utils.hf_utils import get_tokenizer, load_chat_template, sampling_defaults

logger = logging.getLogger(__name__)

# Inputs above this many characters (or with a grammar to check) are validated on a worker
# thread, so a huge prompt cannot stall the event loop (and /health) while it is tokenized.
OFF_LOOP_CHARS = 16 * 1024
# Sent to the waiters of a runtime that died (the scheduler or detokenizer process is gone).
RUNTIME_DEAD_MESSAGE = "The server's runtime stopped (scheduler or detokenizer process died); the request was lost."


# What the TokenizerManager needs from the objects its entry points hand it (structural types,
# so managers/ does not import entrypoints/ or Starlette).
class SchedulerPorts(Protocol):
    """The ZMQ endpoints (``entrypoints.process_utils.PortArgs``)."""

    scheduler_input_ipc: str
    tokenizer_ipc: str


class ClientConnection(Protocol):
    """The HTTP request a generation serves (a Starlette ``Request``): polled for disconnects."""

    async def is_disconnected(self) -> bool: ...


class OutputObserver(Protocol):
    """Per-request metrics (``entrypoints.metrics.ServerMetrics``)."""

    def on_output(self, state: ReqState, new_ids: list[int], now: float) -> None: ...

    def on_finish(self, state: ReqState, now: float) -> None: ...


class TokenizerManager:
    def __init__(self, server_args: ServerArgs, port_args: SchedulerPorts, context_len: int, vocab_size: int,
                 max_total_num_tokens: int | None = None):
        self.server_args = server_args
        assert server_args.tokenizer_path is not None  # ServerArgs.__post_init__ defaults it
        self.tokenizer = get_tokenizer(server_args.tokenizer_path, server_args.revision, server_args.trust_remote_code)
        # Request fields left unset take the model's generation_config.json values (SGLang's
        # --sampling-defaults model); explicit request values always win.
        self.sampling_defaults = (
            sampling_defaults(server_args.model_path, server_args.revision)
            if server_args.sampling_defaults == "model" else {}
        )
        self.chat_template = load_chat_template(self.tokenizer, server_args.chat_template)
        if server_args.chat_template:
            self.tokenizer.chat_template = self.chat_template
        self.context_len = context_len
        self.vocab_size = vocab_size
        # The KV pool's size (SchedulerReady): requests that could never fit it are refused here.
        self.max_total_num_tokens = max_total_num_tokens
        self.max_fanout = server_args.max_fanout
        self.model_path = server_args.model_path
        self.served_model_name = server_args.served_model_name
        self.ctx = zmq.asyncio.Context(2)
        self.send_to_scheduler = self.ctx.socket(zmq.PUSH)
        self.send_to_scheduler.connect(port_args.scheduler_input_ipc)
        self.recv_from_detok = self.ctx.socket(zmq.PULL)
        self.recv_from_detok.bind(port_args.tokenizer_ipc)
        self.rid_to_state: dict[str, ReqState] = {}
        self._rid_groups: dict[str, list[str]] = {}  # client rid of an n > 1 request -> its samples' rids
        self._control_futures: dict[type, asyncio.Future] = {}
        self._control_lock: asyncio.Lock | None = None
        self._loop_task: asyncio.Task | None = None
        self.metrics: OutputObserver | None = None  # set by the HTTP server: called on first token and finish
        self.grammar_validator = _make_grammar_validator()
        # One thread: heavy validations queue behind each other instead of sharing the tokenizer.
        self._validate_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sglite-validate")
        self._max_token_bytes = _max_token_bytes(self.tokenizer)
        self.dead_message: str | None = None  # set by fail_all(): no request can run any more

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the receive loop on the running event loop (idempotent)."""
        if self._loop_task is None:
            self._control_lock = asyncio.Lock()
            self._loop_task = asyncio.get_running_loop().create_task(self.handle_loop())

    async def close(self) -> None:
        """Stop the receive loop and close the sockets."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except (asyncio.CancelledError, Exception):
                pass
            self._loop_task = None
        self.send_to_scheduler.close(linger=0)
        self.recv_from_detok.close(linger=0)
        self._validate_pool.shutdown(wait=False)

    def fail_all(self, message: str = RUNTIME_DEAD_MESSAGE, status_code: int = 503) -> None:
        """The runtime is gone: finish every waiting request with a server error (their clients
        get a 5xx with ``message``, never a hang or a 499), and refuse new ones."""
        self.dead_message = message
        reason = FinishAbort(message, status_code=status_code)
        for state in self.rid_to_state.values():
            if not state.finished:
                state.finish_reason = reason
                state.finished = True
                state.out_list.append(True)
                state.event.set()

    async def handle_loop(self) -> None:
        while True:
            data = await self.recv_from_detok.recv()
            try:
                msg = decode(data)
                if isinstance(msg, BatchStrOut):
                    self._handle_str_out(msg)
                elif isinstance(msg, (FlushCacheReqOutput, GetInternalStateReqOutput)):
                    fut = self._control_futures.pop(type(msg), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
            except Exception:  # one bad message must not stop every later reply
                logger.exception("failed to handle a runtime message")

    # ---- validation and tokenization ---------------------------------------------------------
    def _tokenize(self, obj: GenerateReqInput) -> list[int]:
        """Token ids of a single request (one element of ``split()``)."""
        if obj.input_ids is not None:
            ids = list(cast("list[int]", obj.input_ids))
            bad = [t for t in ids if t < 0 or t >= self.vocab_size]
            if bad:
                raise ValueError(f"Token id {bad[0]} is out of vocabulary (vocabulary size {self.vocab_size}).")
            return ids
        text = cast("str | None", obj.text)
        if not text:
            return []
        # No token spans more than _max_token_bytes bytes, so this bound is cheap and exact enough
        # to refuse a megabyte prompt without tokenizing it.
        at_least = -(-len(text.encode("utf-8", "surrogatepass")) // self._max_token_bytes)
        if at_least >= self.context_len:
            raise ValueError(f"The input (at least {at_least} tokens) is longer than the model's context length "
                             f"({self.context_len} tokens).")
        return self.tokenizer.encode(text, add_special_tokens=False)

    def validate(self, ids: list[int], sp_dict: dict | None) -> SamplingParams:
        if sp_dict is not None and not isinstance(sp_dict, dict):
            raise ValueError("sampling_params must be a JSON object.")
        merged = dict(sp_dict or {})
        for key, value in self.sampling_defaults.items():
            if merged.get(key) is None:
                merged[key] = value
        sp = SamplingParams.from_dict(merged)
        sp.normalize(self.tokenizer)
        sp.verify(self.vocab_size)
        check_context_length(sp, len(ids), self.context_len, self.max_total_num_tokens)
        if sp.n > MAX_N:
            raise ValueError(f"n must be at most {MAX_N}, got {sp.n}.")
        if self.grammar_validator is not None:
            self.grammar_validator(sp)
        return sp

    # ---- generate ------------------------------------------------------------------------------
    async def generate_request(self, obj: GenerateReqInput, request: ClientConnection | None = None) -> AsyncGenerator[Any, None]:
        """Yield outputs in the ``/generate`` shape: one dict (single) or a list (batch).

        Streaming yields cumulative text chunks (with ``index`` for batches). Raises
        ValueError for invalid input, before anything is sent to the scheduler.
        """
        self.start()
        if self.dead_message is not None:
            raise RuntimeError(self.dead_message)
        prepared = await self._prepare(obj)
        # (index in the response, single, ids, sampling dict, rid)
        expanded: list[tuple[int, GenerateReqInput, list[int], dict[str, Any], str]] = []
        for i, (s, ids, sp) in enumerate(prepared):
            base = single_rid(s) or uuid.uuid4().hex
            if sp.n > 1:
                for j in range(sp.n):
                    d = sp.to_dict() | {"n": 1}
                    if sp.seed is not None:  # seed + j, wrapped to 64 bits as the sampler reads it
                        d["seed"] = sp.seed + j if sp.seed + j < 2**64 else sp.seed + j - 2**64
                    expanded.append((len(expanded), s, ids, d, f"{base}-{j}"))
            else:
                expanded.append((len(expanded), s, ids, sp.to_dict(), base))
        for _, s, ids, d, rid in expanded:
            if rid in self.rid_to_state:
                raise ValueError(f"Duplicate request id {rid!r}.")
        groups: dict[str, list[str]] = {}
        for s, _, sp in prepared:
            group_rid = single_rid(s)
            if group_rid and sp.n > 1:
                groups[group_rid] = [f"{group_rid}-{j}" for j in range(sp.n)]
        self._rid_groups.update(groups)
        try:
            # Only now, with the whole batch valid, does anything reach the scheduler.
            for s, ids, sp in prepared:
                if sp.n > 1:
                    await self._precache_prefix(ids, single_rid(s) or uuid.uuid4().hex)
            for _, s, ids, d, rid in expanded:
                self._send(s, ids, d, rid)
            if obj.stream:
                async for chunk in self._stream(expanded, obj.is_batch() or len(expanded) > 1, request):
                    yield chunk
            else:
                results = [await self._wait_final(rid, s, request) for _, s, _, _, rid in expanded]
                yield results if (obj.is_batch() or len(results) > 1) else results[0]
        finally:
            for g in groups:
                self._rid_groups.pop(g, None)
            for _, _, _, _, rid in expanded:
                if rid in self.rid_to_state:
                    self.abort_request(rid)

    async def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Tokenize ``text`` for a route such as ``/tokenize``: invalid Unicode is a ValueError,
        and a large text is tokenized on the worker thread, not on the event loop."""
        check_unicode(text, "text")
        if len(text) <= OFF_LOOP_CHARS:
            return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))
        return await asyncio.get_running_loop().run_in_executor(
            self._validate_pool, lambda: list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens)))

    async def _prepare(self, obj: GenerateReqInput) -> list[tuple[GenerateReqInput, list[int], SamplingParams]]:
        """Validate and tokenize the whole request (every prompt of a batch) or raise ValueError.

        Large inputs and grammars go to a worker thread: tokenizing megabytes or checking a
        grammar must not stall the event loop that answers every other client.
        """
        size = input_chars(obj)
        heavy = size > OFF_LOOP_CHARS or has_grammar(obj.sampling_params)
        if not heavy:
            return self._prepare_sync(obj)
        return await asyncio.get_running_loop().run_in_executor(self._validate_pool, self._prepare_sync, obj)

    def _prepare_sync(self, obj: GenerateReqInput) -> list[tuple[GenerateReqInput, list[int], SamplingParams]]:
        try:
            check_generate_input(obj)
            prepared, fanout = [], 0
            for s in obj.split():
                ids = self._tokenize(s)
                sp = self.validate(ids, cast("dict | None", s.sampling_params))  # a single's: one dict
                fanout += sp.n
                if fanout > self.max_fanout:
                    raise ValueError(f"The request fans out to more than {self.max_fanout} sequences (prompts x n); "
                                     "split it or raise --max-fanout.")
                prepared.append((s, ids, sp))
            return prepared
        except RecursionError:
            raise ValueError("The request is nested too deeply (a regex, schema or object).") from None

    async def _precache_prefix(self, ids: list[int], base: str) -> None:
        # n samples of one prompt: prefill it once so the n requests hit the radix cache.
        rid = f"{base}-prefix"
        self._send(GenerateReqInput(input_ids=ids), ids, {"max_new_tokens": 0}, rid)
        await self._wait_final(rid, GenerateReqInput(input_ids=ids), None)

    def _send(self, s: GenerateReqInput, ids: list[int], sp: dict, rid: str) -> None:
        self.rid_to_state[rid] = ReqState()
        start = cast("int | None", s.logprob_start_len)  # a single request's
        start = start if start is not None else -1
        if start >= len(ids):
            start = len(ids) - 1
        msg = TokenizedGenerateReqInput(
            rid=rid, input_text=s.text if isinstance(s.text, str) else None, input_ids=ids, sampling_params=sp,
            return_logprob=bool(s.return_logprob), logprob_start_len=start,
            top_logprobs_num=int(cast("int | None", s.top_logprobs_num) or 0), stream=bool(s.stream))
        self.send_to_scheduler.send(encode(msg))
        if self.server_args.log_requests:
            logger.info("request %s: %d prompt tokens, %s", rid, len(ids), sp)

    async def _wait_one(self, rid: str, request: ClientConnection | None) -> ReqState:
        state = self.rid_to_state.get(rid)
        if state is None:  # aborted and forgotten meanwhile (e.g. its client went away)
            raise asyncio.CancelledError(f"request {rid} was aborted")
        while True:
            try:
                await asyncio.wait_for(state.event.wait(), timeout=1.0)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    self.abort_request(rid)
                    raise asyncio.CancelledError(f"client disconnected; aborted {rid}")
                continue
            state.event.clear()
            return state

    async def _wait_final(self, rid: str, s: GenerateReqInput, request: ClientConnection | None) -> dict:
        while True:
            state = await self._wait_one(rid, request)
            if state.finished:
                self.rid_to_state.pop(rid, None)
                state.out_list.clear()
                return format_output(rid, state, s, False, self.tokenizer)

    async def _stream(self, expanded: list[tuple[int, GenerateReqInput, list[int], dict[str, Any], str]], batched: bool,
                      request: ClientConnection | None) -> AsyncGenerator[dict, None]:
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, s: GenerateReqInput, rid: str) -> None:
            try:
                while True:
                    state = await self._wait_one(rid, request)
                    chunk = format_output(rid, state, s, True, self.tokenizer)
                    if batched:
                        chunk["index"] = index
                    await queue.put(chunk)
                    if state.finished:
                        self.rid_to_state.pop(rid, None)
                        break
            finally:
                await queue.put(None)

        tasks = [asyncio.create_task(pump(i, s, rid)) for i, s, _, _, rid in expanded]
        done = 0
        try:
            while done < len(tasks):
                item = await queue.get()
                if item is None:
                    done += 1
                else:
                    yield item
        finally:
            for t in tasks:
                t.cancel()
            # Retrieve their outcomes, so no "Task exception was never retrieved" is logged.
            await asyncio.gather(*tasks, return_exceptions=True)

    # ---- outputs ---------------------------------------------------------------------------------
    def _handle_str_out(self, recv: BatchStrOut) -> None:
        now = time.monotonic()
        for i, rid in enumerate(recv.rids):
            state = self.rid_to_state.get(rid)
            if state is None:
                continue  # aborted and forgotten
            state.text = recv.texts[i]
            new_ids = recv.new_token_ids[i]
            state.output_ids.extend(new_ids)
            m = state.meta
            m.update(prompt_tokens=recv.prompt_tokens[i], completion_tokens=recv.completion_tokens[i],
                     cached_tokens=recv.cached_tokens[i])
            state.finish_reason = recv.finished_reasons[i]
            for key in ("output_token_logprobs", "output_top_logprobs"):
                val = getattr(recv, key)[i]
                if val is not None:
                    m.setdefault(key, []).extend(val)
                    m.setdefault("_pending_" + key, []).extend(val)
            for key in ("input_token_logprobs", "input_top_logprobs"):
                val = getattr(recv, key)[i]
                if val is not None:
                    m[key] = val
            if new_ids and state.first_token_time is None:
                state.first_token_time = now
            if self.metrics is not None:
                self.metrics.on_output(state, new_ids, now)
            state.last_token_time = now
            state.out_list.append(True)
            if state.finish_reason is not None:
                state.finished = True
                if self.metrics is not None:
                    self.metrics.on_finish(state, now)
            state.event.set()

    # ---- control -----------------------------------------------------------------------------------
    def abort_request(self, rid: str = "", abort_all: bool = False, keep_waiters: bool = False) -> None:
        """Abort one request by its exact rid (with the samples ``rid-0``… of an ``n > 1``
        request sent as ``rid``), or every request. The waiters are forgotten (right for a
        client that went away) unless ``keep_waiters``: then they receive ``finish_reason: abort``."""
        rids = [] if abort_all else [rid, *self._rid_groups.get(rid, ())]
        if abort_all:
            self.send_to_scheduler.send(encode(AbortReq(abort_all=True)))
        for r in rids:
            self.send_to_scheduler.send(encode(AbortReq(rid=r)))
        if keep_waiters:
            return
        if abort_all:
            self.rid_to_state.clear()
        for r in rids:
            self.rid_to_state.pop(r, None)

    async def _control(self, req: Any, reply_type: type, timeout: float = 30.0) -> Any:
        self.start()
        assert self._control_lock is not None  # created by start()
        async with self._control_lock:
            fut = asyncio.get_running_loop().create_future()
            self._control_futures[reply_type] = fut
            self.send_to_scheduler.send(encode(req))
            return await asyncio.wait_for(fut, timeout)

    async def flush_cache(self, empty_cache: bool = False) -> FlushCacheReqOutput:
        """Drop the scheduler's caches (refused while requests run); ``empty_cache``: see ``FlushCacheReq``."""
        return await self._control(FlushCacheReq(empty_cache=empty_cache), FlushCacheReqOutput)

    async def get_internal_state(self) -> dict:
        return (await self._control(GetInternalStateReq(), GetInternalStateReqOutput)).state

    def model_info(self) -> dict:
        return {
            "model_path": self.model_path,
            "tokenizer_path": self.server_args.tokenizer_path,
            "is_generation": True,
            "served_model_name": self.served_model_name,
            "chat_template": self.chat_template,
            "bos_token": getattr(self.tokenizer, "bos_token", None),
            "eos_token": getattr(self.tokenizer, "eos_token", None),
            "max_context_length": self.context_len,
            "vocab_size": self.vocab_size,
        }

    def server_args_dict(self) -> dict:
        return dataclasses.asdict(copy.copy(self.server_args)) | {"api_key": None}


def _max_token_bytes(tokenizer: Any) -> int:
    """An upper bound on the UTF-8 bytes one token stands for (its vocabulary string is never
    shorter: byte-level and SentencePiece markers take more bytes than what they encode)."""
    try:
        return max(8, max(len(t.encode("utf-8", "surrogatepass")) for t in tokenizer.get_vocab()))
    except Exception:  # a tokenizer without a string vocabulary: no cheap bound
        logger.warning("tokenizer has no string vocabulary; huge prompts are tokenized before refusal")
        return 1 << 30


def _make_grammar_validator() -> Callable[[Any], None]:
    from sglite_runtime.managers.grammar_manager import validate_sampling_params

    return validate_sampling_params
