"""Compiled programs: a traced graph sent to the runtime in one round trip.

``f.compile(**args)`` traces ``f`` with those arguments into a
:class:`CompiledProgram`; ``.run(backend)`` posts the graph (``/run_program``
over HTTP, ``Engine.run_program`` in process) and returns a
:class:`CompiledProgramState` that reads like a ProgramState: ``s["x"]``
blocks until ``x`` arrives and re-raises the runtime's error for it.

``f.run(..., compile="auto")`` compiles when it can and otherwise logs why and
interprets; ``compile=True`` raises :class:`NotCompilable` instead. Note that
tracing calls the user function once, so a fallback calls it a second time.
"""
from __future__ import annotations

import builtins
import logging
import threading
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

from sglite.protocol.graph import ProgramGraph
from sglite.protocol.sampling import SglSamplingParams
from sglite.lang.tracer import NotCompilable, TracedVar, trace_program

if TYPE_CHECKING:
    from sglite.lang.program_state import ProgramState

logger = logging.getLogger(__name__)

_WAIT_S = 0.5
_ERROR_TYPES = ("ValueError", "RuntimeError", "TypeError", "KeyError", "AssertionError", "IndexError")


def _rebuild_error(ev: dict[str, Any]) -> BaseException:
    """The runtime's error as the same builtin type when possible."""
    etype, msg = ev.get("error_type") or "RuntimeError", ev.get("message") or ""
    if etype in _ERROR_TYPES:
        return getattr(builtins, etype)(msg)
    return RuntimeError(f"{etype}: {msg}")


def supports_programs(backend: Any) -> bool:
    return program_support(backend)[0]


def program_support(backend: Any) -> tuple[bool, str]:
    """``(True, "")`` when ``backend`` runs graphs, else ``(False, why)`` (a server may not)."""
    if not callable(getattr(backend, "run_program", None)):
        return False, f"the backend {type(backend).__name__} cannot run compiled programs"
    probe = getattr(backend, "program_support", None)
    return probe() if callable(probe) else (True, "")


class CompiledProgramState:
    """The result of a compiled run: variables, text and messages of the root stream."""

    def __init__(self, graph: ProgramGraph, stream: bool = False) -> None:
        self.graph = graph
        self.stream = stream
        self.cond = threading.Condition()
        self.variables: dict[str, Any] = {}
        self.meta_info: dict[str, Any] = {}
        self.var_errors: dict[str, BaseException] = {}
        self.stream_vars: dict[int, dict[str, Any]] = {}
        self.seen_nodes: set[int] = set()
        self.error_: Optional[BaseException] = None
        self.finished = False
        self.texts: Optional[list[str]] = None
        self.all_messages: Optional[list[list[dict[str, Any]]]] = None
        self.stream_text = ""  # root text built from streamed deltas
        self.var_chunks: dict[str, list[str]] = {}
        self._ret_value = graph.ret_value

    # -- feeding (runner thread) ----------------------------------------------
    def feed(self, ev: dict[str, Any]) -> None:
        with self.cond:
            kind, sid = ev.get("type"), ev.get("stream", 0)
            if kind == "var":
                self.stream_vars.setdefault(sid, {})[ev["name"]] = ev["value"]
                if sid == 0:
                    self.variables[ev["name"]] = ev["value"]
                    self.meta_info[ev["name"]] = ev.get("meta_info")
                    self.var_errors.pop(ev["name"], None)
                    self.seen_nodes.add(ev.get("node", -1))
            elif kind == "error":
                err = _rebuild_error(ev)
                if sid == 0 and ev.get("name"):
                    self.var_errors[ev["name"]] = err
                    self.seen_nodes.add(ev.get("node", -1))
                elif sid == 0 and self.error_ is None:
                    self.error_ = err
            elif kind == "text" and sid == 0:
                self.stream_text += ev["delta"]
                if ev.get("var"):
                    self.var_chunks.setdefault(ev["var"], []).append(ev["delta"])
            elif kind == "done":
                self.texts = ev.get("texts")
                self.all_messages = ev.get("messages")
            self.cond.notify_all()

    def finish(self, error: Optional[BaseException] = None) -> None:
        with self.cond:
            if error is not None and self.error_ is None:
                self.error_ = error
            self.finished = True
            self.cond.notify_all()

    # -- reading ------------------------------------------------------------
    def _wait(self, pred: Any) -> None:
        with self.cond:
            while not pred() and not self.finished:
                self.cond.wait(_WAIT_S)

    def get_var(self, name: str) -> Any:
        """Block until ``name`` has its final value; re-raise the runtime's error for it."""
        final = self.graph.root_sources.get(name)
        self._wait(lambda: final is not None and final in self.seen_nodes)
        with self.cond:
            if name in self.var_errors:
                raise self.var_errors[name]
            if name in self.variables:
                return self.variables[name]
            if self.error_ is not None:
                raise self.error_
        raise KeyError(f"variable {name!r} was never produced by this program")

    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def set_var(self, name: str, value: Any) -> None:
        with self.cond:
            self.variables[name] = value
            self.var_errors.pop(name, None)

    def __contains__(self, name: str) -> bool:
        return name in self.variables

    def get_meta_info(self, name: str) -> Any:
        self.get_var(name)
        return self.meta_info.get(name)

    def sync(self) -> None:
        self._wait(lambda: False)

    def text(self) -> str:
        self.sync()
        return self.texts[0] if self.texts else self.stream_text

    def messages(self) -> list[dict[str, Any]]:
        self.sync()
        return self.all_messages[0] if self.all_messages else []

    def error(self) -> Optional[BaseException]:
        self.sync()
        return self.error_

    @property
    def ret_value(self) -> Any:
        value = self._ret_value
        if isinstance(value, TracedVar):  # `return s["x"]`: resolve once it exists
            got = self.get_var(value.name)
            return got if value.index is None else got[value.index]
        return value

    def text_iter(self, var_name: Optional[str] = None) -> Iterator[str]:
        """Yield deltas of the root text (or of one variable) as they arrive."""
        if not self.stream:
            yield self.text() if var_name is None else self.get_var(var_name)
            return
        pos = 0
        final = self.graph.root_sources.get(var_name) if var_name else None
        while True:
            with self.cond:
                while True:
                    src = self.stream_text if var_name is None else "".join(self.var_chunks.get(var_name, []))
                    done = self.finished or (final is not None and final in self.seen_nodes)
                    if len(src) > pos or done:
                        break
                    self.cond.wait(_WAIT_S)
                chunk, pos = src[pos:], len(src)
            if chunk:
                yield chunk
            if done:
                if var_name is not None and pos == 0:
                    yield self.get_var(var_name)  # a select or var_scope: one piece
                elif var_name is not None and var_name in self.var_errors:
                    raise self.var_errors[var_name]
                return

    def __repr__(self) -> str:
        return f"CompiledProgramState({self.text()!r})"


def _drive(state: CompiledProgramState, backend: Any, graph: dict[str, Any], defaults: dict[str, Any],
           stream: bool) -> None:
    try:
        if stream:
            for ev in backend.run_program(graph, defaults, stream=True):
                state.feed(ev)
        else:
            for ev in backend.run_program(graph, defaults)["events"]:
                state.feed(ev)
        state.finish()
    except BaseException as e:  # noqa: BLE001 - surfaced where the program is read
        logger.warning("compiled program failed: %s: %s", type(e).__name__, e)
        state.finish(e)


class CompiledProgram:
    """A program traced with fixed arguments: ``.graph``, ``.plan()``, ``.run()``."""

    def __init__(self, name: str, graph: ProgramGraph) -> None:
        self.name = name
        self.graph = graph

    def to_json(self) -> str:
        return self.graph.to_json()

    def run(self, backend: Any = None, stream: bool = False, **sampling: Any) -> CompiledProgramState:
        """Send the graph; return at once with a state whose reads block as needed.

        ``sampling`` holds the program-wide defaults of ``SglFunction.run``
        (``temperature``, ``max_new_tokens``, ``seed``, ...).
        """
        from sglite.lang.interpreter import resolve_backend

        if sampling.get("stop") is None:
            sampling["stop"] = []
        if sampling.get("stop_token_ids") is None:
            sampling["stop_token_ids"] = []
        return self.run_with(resolve_backend(backend), SglSamplingParams(**sampling), stream)

    def run_with(self, backend: Any, defaults: SglSamplingParams, stream: bool = False) -> CompiledProgramState:
        ok, why = program_support(backend)
        if not ok:
            raise NotCompilable(why)
        state = CompiledProgramState(self.graph, stream)
        threading.Thread(target=_drive, args=(state, backend, self.graph.to_dict(), defaults.to_dict(), stream),
                         name="sglite-compiled", daemon=True).start()
        return state

    def plan(self) -> str:
        """A readable execution plan: prefixes, streams, dependencies and request waves."""
        from sglite.lang.plan import format_plan

        return format_plan(self.graph)


def compile_function(func: Any, kwargs: dict[str, Any]) -> CompiledProgram:
    """Trace ``func`` (an SglFunction) with ``kwargs``; raise NotCompilable if it is dynamic."""
    graph = trace_program(func, kwargs)
    return CompiledProgram(graph.name, graph)


def run_maybe_compiled(func: Any, call_kwargs: dict[str, Any], defaults: SglSamplingParams, backend: Any,
                       stream: bool, mode: Any) -> Optional[CompiledProgramState]:
    """``compile=True``: run compiled or raise; ``"auto"``: None (interpret) when impossible."""
    from sglite.lang.interpreter import resolve_backend

    if mode not in (True, "auto"):
        raise ValueError(f"compile must be True, False or 'auto', got {mode!r}")
    backend = resolve_backend(backend)
    try:
        ok, why = program_support(backend)
        if not ok:
            raise NotCompilable(why)
        program = compile_function(func, call_kwargs)
    except NotCompilable as e:
        if mode is True:
            raise
        # A warning, so the reason is visible without any logging setup (Python's last-resort handler).
        logger.warning("running %s with the interpreter: %s", getattr(func, "__name__", "program"), e)
        return None
    return program.run_with(backend, defaults, stream)


def run_batch_maybe_compiled(func: Any, batch: list[dict[str, Any]], defaults: SglSamplingParams,
                             backend: Any, mode: Any
                             ) -> tuple[list[Optional[Union[CompiledProgramState, ProgramState]]], list[int]]:
    """Compile every program of a batch and run those graphs in ONE backend call.

    Returns the states (None where the program must be interpreted) and the
    indices to interpret. ``mode=True`` raises on the first program that cannot compile.
    """
    from sglite.lang.interpreter import resolve_backend

    backend = resolve_backend(backend)
    # None where the program must be interpreted; the caller puts its ProgramState there.
    states: list[Optional[Union[CompiledProgramState, ProgramState]]] = [None] * len(batch)
    fallback: list[int] = []
    graphs: list[tuple[int, ProgramGraph]] = []
    for i, kwargs in enumerate(batch):
        try:
            ok, why = program_support(backend)
            if not ok:
                raise NotCompilable(why)
            graphs.append((i, compile_function(func, kwargs).graph))
        except NotCompilable as e:
            if mode is True:
                raise
            if not fallback:  # one warning per batch, with the first reason
                reason = str(e)
            fallback.append(i)
    if fallback:
        logger.warning("%d of %d programs of the batch run with the interpreter (first: program %d: %s)",
                       len(fallback), len(batch), fallback[0], reason)
    if graphs:
        compiled = {i: CompiledProgramState(g) for i, g in graphs}
        for i, st in compiled.items():
            states[i] = st
        try:
            results = backend.run_program([g.to_dict() for _, g in graphs], defaults.to_dict())
            for (i, _), res in zip(graphs, results):
                for ev in res["events"]:
                    compiled[i].feed(ev)
                compiled[i].finish()
        except Exception as e:  # noqa: BLE001 - every program of the call failed the same way
            logger.warning("compiled batch failed: %s: %s", type(e).__name__, e)
            for i, _ in graphs:
                compiled[i].finish(e)
    return states, fallback
