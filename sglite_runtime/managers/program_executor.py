"""ProgramExecutor: run a compiled request graph inside the server (or Engine) process.

Every stream of the graph is an asyncio task that executes its nodes in order,
exactly like the frontend interpreter's StreamExecutor (same text, roles,
variables, joins), but the model calls are in-process ``generate_request``s:

* a fork first pre-caches the parent's text (prefill only, ``max_new_tokens: 0``),
  then starts its branches at once, so they hit the radix cache together;
* independent streams run concurrently and the scheduler batches their requests;
* a select sends ``sglite.protocol.select``'s scoring requests itself (one batched list
  request, plus the unconditional one when the method needs it) and takes the protocol's
  decision, so its semantics are the interpreter's, token for token;
* a ``var_ref`` waits for the node that produces the variable, in any stream.

Events (dicts): ``var`` (a stream published a variable), ``text`` (streaming
deltas), ``error`` (per failed variable, and once per failed stream with
``name: None``) and a final ``done`` with every stream's text and messages.
Cancelling the event iterator cancels every stream; their requests are aborted.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncGenerator, AsyncIterator, Optional

from sglite.protocol.chat_template import ChatTemplate
from sglite.protocol.graph import PRODUCERS, ProgramGraph, validate_graph, validate_sampling_defaults
from sglite.protocol.graph_nodes import (
    Fill, Fork, Gen, Join, Node, RoleBegin, RoleEnd, Select, SetVar, VarBegin, VarEnd, VarRef,
)
from sglite.protocol.sampling import SglSamplingParams, typed_completion
from sglite.protocol.select import (
    align_scores, method_by_name, scoring_request, select_decision, unconditional_request,
)
from sglite.protocol.stream_state import StreamText, gathered_names, static_prefix
from sglite_runtime.managers.io_struct import GenerateReqInput

logger = logging.getLogger(__name__)

PRECACHE_MIN_CHARS = 64  # shorter shared prefixes are not worth an extra prefill
_NONE_PARAMS = {f: None for f in SglSamplingParams.__dataclass_fields__}


async def _collect(tm: Any, obj: GenerateReqInput, request: Any = None) -> Any:
    out = None
    async for out in tm.generate_request(obj, request):
        pass
    return out


def _check_abort(meta: dict[str, Any]) -> None:
    fr = meta.get("finish_reason") or {}
    if isinstance(fr, dict) and fr.get("type") == "abort":
        raise RuntimeError(str(fr.get("message") or "the request was aborted"))


def _request(payload: dict[str, Any]) -> GenerateReqInput:
    """A protocol payload (SGLang's /generate fields) as an in-process request."""
    return GenerateReqInput(
        text=payload.get("text"), input_ids=payload.get("input_ids"),
        sampling_params=payload.get("sampling_params"), return_logprob=bool(payload.get("return_logprob")),
        logprob_start_len=payload.get("logprob_start_len"),
        return_text_in_logprobs=bool(payload.get("return_text_in_logprobs")))


class _StreamState:
    """One stream: its ``StreamText`` (shared with the interpreter) plus variables and status."""

    def __init__(self, sid: int, nodes: list[Node]) -> None:
        self.sid = sid
        self.nodes = nodes
        self.tx = StreamText()
        self.vars: dict[str, Any] = {}
        self.metas: dict[str, Any] = {}
        self.error: Optional[BaseException] = None
        self.finished = False
        self.done = asyncio.Event()

    @property
    def text(self) -> str:
        return self.tx.text

    def inherit(self, parent: "_StreamState") -> None:
        self.tx = parent.tx.fork()
        self.vars = dict(parent.vars)
        self.metas = dict(parent.metas)


class _GraphRun:
    """One execution of one graph."""

    def __init__(self, tm: Any, template: ChatTemplate, graph: ProgramGraph, defaults: SglSamplingParams,
                 stream: bool, request: Any) -> None:
        self.tm = tm
        self.template = template
        self.graph = graph
        self.defaults = defaults
        self.streaming = stream
        self.request = request
        self.states = {s.id: _StreamState(s.id, s.nodes) for s in graph.streams}
        self.node_done = {n.id: asyncio.Event() for s in graph.streams for n in s.nodes}
        self.node_error: dict[int, BaseException] = {}
        self.produced: dict[tuple[int, str], Any] = {}
        self.queue: asyncio.Queue = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.pending = len(self.states)

    # -- driver -------------------------------------------------------------
    async def events(self) -> AsyncIterator[dict[str, Any]]:
        self._launch(self.states[0])
        try:
            while True:
                ev = await self.queue.get()
                if ev is None:
                    break
                yield ev
            yield {"type": "done", "texts": [self.states[i].text for i in range(len(self.states))],
                   "messages": [self.states[i].tx.messages for i in range(len(self.states))]}
        finally:
            live = [t for t in self.tasks if not t.done()]
            for t in live:
                t.cancel()
            if live:
                await asyncio.gather(*live, return_exceptions=True)

    def _emit(self, ev: Optional[dict[str, Any]]) -> None:
        self.queue.put_nowait(ev)

    def _launch(self, st: _StreamState) -> None:
        self.tasks.append(asyncio.get_running_loop().create_task(self._run_stream(st)))

    def _finish(self, st: _StreamState) -> None:
        if st.finished:
            return
        st.finished = True
        st.done.set()
        self.pending -= 1
        if self.pending == 0:
            self._emit(None)

    async def _run_stream(self, st: _StreamState) -> None:
        try:
            for node in st.nodes:
                if st.error is None:
                    try:
                        await self._execute(st, node)
                        self.node_done[node.id].set()
                        continue
                    except asyncio.CancelledError:
                        raise
                    except Exception as e:  # noqa: BLE001 - reported as events, re-raised by the reader
                        logger.info("program %s stream %d node %d failed: %s: %s",
                                    self.graph.name, st.sid, node.id, type(e).__name__, e)
                        self._fail_stream_error(st, e)
                self._skip(st, node)
        finally:
            self._finish(st)

    def _fail_stream_error(self, st: _StreamState, e: BaseException) -> None:
        st.error = e
        self._emit({"type": "error", "stream": st.sid, "name": None, "message": str(e),
                    "error_type": type(e).__name__})

    def _skip(self, st: _StreamState, node: Node) -> None:
        """Fail ``node`` with the stream's error (and any branch it would have started)."""
        assert st.error is not None  # a stream skips nodes only after it failed
        self.node_error[node.id] = st.error
        if isinstance(node, PRODUCERS) and node.name:
            self._emit({"type": "error", "stream": st.sid, "name": node.name, "node": node.id,
                        "message": str(st.error), "error_type": type(st.error).__name__})
        if isinstance(node, Fork):
            for c in node.children:
                child = self.states[c]
                child.inherit(st)
                self._fail_stream_error(child, st.error)
                for n in child.nodes:
                    self._skip(child, n)
                self._finish(child)
        self.node_done[node.id].set()

    # -- state helpers ------------------------------------------------------
    def _append(self, st: _StreamState, text: str, var: Optional[str] = None) -> None:
        self._emit_text(st, st.tx.append(text), var)

    def _emit_text(self, st: _StreamState, text: str, var: Optional[str] = None) -> None:
        """A streaming delta for ``text``, already appended to the stream."""
        if text and self.streaming:
            ev = {"type": "text", "stream": st.sid, "delta": text}
            if var:
                ev["var"] = var
            self._emit(ev)

    def _publish(self, st: _StreamState, node: Node, name: Optional[str], value: Any,
                 meta: Any = None) -> None:
        if not name:
            return
        st.vars[name] = value
        if meta is not None:
            st.metas[name] = meta
        self.produced[(node.id, name)] = value
        self._emit({"type": "var", "stream": st.sid, "node": node.id, "name": name, "value": value,
                    "meta_info": meta})

    # -- nodes --------------------------------------------------------------
    async def _execute(self, st: _StreamState, node: Node) -> None:
        match node:
            case Fill():
                self._append(st, node.text)
            case Gen():
                await self._gen(st, node)
            case Select():
                await self._select(st, node)
            case RoleBegin():
                self._emit_text(st, st.tx.role_begin(node.role, self.template))
            case RoleEnd():
                self._emit_text(st, st.tx.role_end(node.role, self.template))
            case VarBegin():
                st.tx.var_begin(node.name)
            case VarEnd():
                self._publish(st, node, node.name, st.tx.var_end(node.name)[0])
            case SetVar():
                self._publish(st, node, node.name, node.value)
            case Fork():
                if node.n > 1 and st.text:
                    await self._prefill(st.text)
                for c in node.children:
                    child = self.states[c]
                    child.inherit(st)
                    self._launch(child)
            case Join():
                await self._join(st, node)
            case VarRef():
                await self._var_ref(st, node)
            case _:  # every Node type is handled above; this guards programming errors
                raise TypeError(f"unknown node {type(node).__name__}")

    async def _prefill(self, text: str) -> None:
        out = await _collect(self.tm, GenerateReqInput(text=text, sampling_params={"max_new_tokens": 0}),
                             self.request)
        _check_abort(out["meta_info"])

    async def _gen(self, st: _StreamState, node: Gen) -> None:
        params = self.defaults.override(SglSamplingParams(**{**_NONE_PARAMS, **node.sampling_params}))
        sp, top = params.to_srt_kwargs()
        n = params.n or 1
        name = node.name
        obj = GenerateReqInput(
            text=st.text, sampling_params=sp, return_logprob=bool(top.get("return_logprob")),
            logprob_start_len=top.get("logprob_start_len"), top_logprobs_num=top.get("top_logprobs_num"),
            return_text_in_logprobs=bool(top.get("return_text_in_logprobs")), stream=self.streaming and n == 1)
        if obj.stream:
            prev, meta = "", {}
            logprobs: list[Any] = []
            async for chunk in self.tm.generate_request(obj, self.request):
                text = chunk["text"]
                delta = text[len(prev):] if len(text) > len(prev) else ""
                prev = text if len(text) >= len(prev) else prev
                meta = dict(chunk["meta_info"])
                logprobs.extend(meta.get("output_token_logprobs") or [])
                self._append(st, delta, var=name)
            _check_abort(meta)
            tail = typed_completion(params.dtype, prev)  # a typed gen cut by max_tokens: close it
            self._append(st, tail, var=name)
            if "output_token_logprobs" in meta:
                meta["output_token_logprobs"] = logprobs
            self._publish(st, node, name, prev + tail, meta)
            return
        resp = await _collect(self.tm, obj, self.request)
        for r in resp if isinstance(resp, list) else [resp]:
            r["text"] += typed_completion(params.dtype, r["text"])
        if isinstance(resp, list) and not (n == 1 and len(resp) == 1):
            for r in resp:
                _check_abort(r["meta_info"])
            texts, metas = [r["text"] for r in resp], [r["meta_info"] for r in resp]
            self._append(st, texts[0], var=name)
            self._publish(st, node, name, texts, metas)
            return
        resp = resp[0] if isinstance(resp, list) else resp
        _check_abort(resp["meta_info"])
        value = [resp["text"]] if n > 1 else resp["text"]
        self._append(st, resp["text"], var=name)
        self._publish(st, node, name, value, [resp["meta_info"]] if n > 1 else resp["meta_info"])

    async def _select(self, st: _StreamState, node: Select) -> None:
        method = method_by_name(node.method)
        choices = list(node.choices)
        payload = scoring_request(st.text, choices, node.temperature)
        scores = align_scores(st.text, choices, await _collect(self.tm, _request(payload), self.request),
                              self.tm.model_info().get("bos_token"))
        unconditional = None
        if method.requires_unconditional_logprobs:
            unconditional = await _collect(self.tm, _request(unconditional_request(scores)), self.request)
        decision = select_decision(choices, method, scores, unconditional)
        self._append(st, decision.decision, var=node.name)
        self._publish(st, node, node.name, decision.decision, decision.meta_info)

    async def _join(self, st: _StreamState, node: Join) -> None:
        children = [self.states[c] for c in node.children]
        for c in children:
            await c.done.wait()
        for c in children:
            if c.error is not None:
                raise c.error
        if node.mode == "gather_variable":
            for name in gathered_names(st.vars, [c.vars for c in children]):
                self._publish(st, node, name, [c.vars.get(name) for c in children],
                              [c.metas.get(name) for c in children])
        else:
            for c in children:
                self._append(st, c.tx.since_fork())

    async def _var_ref(self, st: _StreamState, node: VarRef) -> None:
        src = node.source
        await self.node_done[src].wait()
        if src in self.node_error:
            raise self.node_error[src]
        key = (src, node.name)
        if key not in self.produced:
            raise KeyError(f"variable {node.name!r} was never produced by this program")
        value = self.produced[key]
        if node.index is not None:
            value = value[node.index]
        if not isinstance(value, str):
            raise TypeError(f"cannot append {type(value).__name__} to a program; use str or an sglite expression")
        self._append(st, value)


class ProgramExecutor:
    """Runs request graphs on a TokenizerManager (one per server/engine)."""

    def __init__(self, tokenizer_manager: Any) -> None:
        self.tm = tokenizer_manager
        self._template: Optional[ChatTemplate] = None

    @property
    def chat_template(self) -> ChatTemplate:
        if self._template is None:
            self._template = ChatTemplate.from_model_info(self.tm.model_info())
        return self._template

    @staticmethod
    def validate(graph_dict: Any, sampling_defaults: Any = None) -> tuple[ProgramGraph, SglSamplingParams]:
        """Parse and check a request; ``ValueError`` (a 400) before anything runs."""
        return validate_graph(graph_dict), validate_sampling_defaults(sampling_defaults)

    async def run(self, graph_dict: Any, sampling_defaults: Optional[dict[str, Any]] = None,
                  stream: bool = False, request: Any = None) -> AsyncGenerator[dict[str, Any], None]:
        """Execute one graph; yield its events (text deltas only when ``stream``)."""
        graph, defaults = self.validate(graph_dict, sampling_defaults)
        self.tm.start()
        run = _GraphRun(self.tm, self.chat_template, graph, defaults, stream, request)
        async for ev in run.events():
            yield ev

    async def collect(self, graph_dict: Any, sampling_defaults: Optional[dict[str, Any]] = None,
                      request: Any = None) -> dict[str, Any]:
        """Execute one graph to the end: ``{"events": [...]}``."""
        return {"events": [ev async for ev in self.run(graph_dict, sampling_defaults, False, request)]}

    async def run_batch(self, graph_dicts: list[Any], sampling_defaults: Optional[dict[str, Any]] = None,
                        request: Any = None) -> list[dict[str, Any]]:
        """Execute many graphs concurrently, after pre-caching their shared static prefix."""
        if not isinstance(graph_dicts, list) or not graph_dicts:
            raise ValueError("'graphs' must be a non-empty list")
        checked = [self.validate(g, sampling_defaults) for g in graph_dicts]
        self.tm.start()
        if len(checked) > 1:
            prefix = _common_prefix([self._static_prefix(g) for g, _ in checked])
            if len(prefix) > PRECACHE_MIN_CHARS:
                await _collect(self.tm, GenerateReqInput(text=prefix, sampling_params={"max_new_tokens": 0}),
                               request)

        async def one(graph: ProgramGraph, defaults: SglSamplingParams) -> dict[str, Any]:
            run = _GraphRun(self.tm, self.chat_template, graph, defaults, False, request)
            return {"events": [ev async for ev in run.events()]}

        return list(await asyncio.gather(*(one(g, d) for g, d in checked)))

    def _static_prefix(self, graph: ProgramGraph) -> str:
        """The root stream's text before its first model call (fills and role markers)."""
        return static_prefix(graph.streams[0].nodes, self.chat_template)


def _common_prefix(texts: list[str]) -> str:
    if not texts:
        return ""
    lo, hi = min(texts), max(texts)
    k = 0
    while k < len(lo) and lo[k] == hi[k]:
        k += 1
    return lo[:k]
