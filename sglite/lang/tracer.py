"""Trace an ``@sglite.function`` into a :class:`ProgramGraph`.

The user function runs once, with its real (bound) arguments, against a
:class:`TracerProgramState` that records nodes instead of running them. Reading
a variable (``s["x"]``) returns a :class:`TracedVar` placeholder: it can be
appended (``s += "A: " + s["x"]``) or indexed/iterated when its length is known
statically (a join's gathered list, ``gen(n=k)``), which becomes a ``var_ref``
node. Anything that needs the *value* — ``if``, ``==``, ``str()``, f-strings,
``int()``, ``len()`` of an unknown length, attribute access — is data-dependent
control flow and raises :class:`NotCompilable` naming the user's source line.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import linecache
import os
from typing import Any, Iterator, Optional, TypeVar, Union

from sglite.protocol.graph import CHOICE_METHODS, ProgramGraph, Stream
from sglite.protocol.graph_nodes import (
    Fill, Fork, Gen, Join, Node, RoleBegin, RoleEnd, Select, SetVar, VarBegin, VarEnd, VarRef,
)
from sglite.lang.ir import (
    SglArgument, SglCommitLazy, SglConstantText, SglExpr, SglExprList, SglGen, SglImage, SglRoleBegin,
    SglRoleEnd, SglSelect, SglVarScopeBegin, SglVarScopeEnd, SglVariable,
)
from sglite.lang.state_group import StateGroupBase

N = TypeVar("N", bound=Node)
_SGLITE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NotCompilable(Exception):
    """The program cannot become a static graph (data-dependent control flow, ...).

    ``reason`` says why; ``filename``/``lineno``/``source_line`` locate the
    user's code that needed a generated value at trace time.
    """

    def __init__(self, reason: str, filename: Optional[str] = None, lineno: Optional[int] = None,
                 source_line: Optional[str] = None) -> None:
        self.reason = reason
        self.filename = filename
        self.lineno = lineno
        self.source_line = source_line
        where = ""
        if lineno is not None:
            where = f" (line {lineno} of {os.path.basename(filename or '?')}"
            where += f": {source_line!r})" if source_line else ")"
        super().__init__(reason + where)


def _user_frame() -> Optional[Any]:
    """The innermost frame outside the sglite package: the user's line."""
    frame = inspect.currentframe()
    while frame is not None:
        fname = os.path.abspath(frame.f_code.co_filename)
        if not fname.startswith(_SGLITE_DIR + os.sep) and not fname.startswith("<frozen"):
            return frame
        frame = frame.f_back
    return None


def not_compilable(reason: str) -> NotCompilable:
    """Build a NotCompilable located at the calling user code."""
    frame = _user_frame()
    if frame is None:
        return NotCompilable(reason)
    fname, lineno = frame.f_code.co_filename, frame.f_lineno
    return NotCompilable(reason, fname, lineno, linecache.getline(fname, lineno).strip() or None)


@dataclasses.dataclass(eq=False)
class TracedVar(SglVariable):
    """Placeholder for a variable's future value; appending it is a ``var_ref``."""

    source_id: int = -1
    index: Optional[int] = None
    length: Optional[int] = None  # statically known list length, else None
    tracer: Any = dataclasses.field(default=None, repr=False)

    def _fail(self, what: str) -> NotCompilable:
        err = not_compilable(f"{what} needs the generated value of {self.name!r} at trace time "
                             "(data-dependent control flow)")
        if self.tracer is not None:
            self.tracer.record_failure(err)
        return err

    # Anything that inspects the value is data-dependent.
    def __bool__(self) -> bool:
        raise self._fail("a truth test")

    def __eq__(self, other: Any) -> bool:
        raise self._fail("a comparison")

    def __ne__(self, other: Any) -> bool:
        raise self._fail("a comparison")

    def __lt__(self, other: Any) -> bool:
        raise self._fail("a comparison")

    __le__ = __gt__ = __ge__ = __lt__
    __hash__ = object.__hash__

    def __str__(self) -> str:
        raise self._fail("converting to str")

    def __format__(self, spec: str) -> str:
        raise self._fail("an f-string or format()")

    def __int__(self) -> int:
        raise self._fail("int()")

    def __float__(self) -> float:
        raise self._fail("float()")

    def __contains__(self, item: Any) -> bool:
        raise self._fail("'in'")

    def __len__(self) -> int:
        if self.length is None or self.index is not None:
            raise self._fail("len()")
        return self.length

    def __iter__(self) -> Iterator["TracedVar"]:
        if self.length is None or self.index is not None:
            raise self._fail("iteration")
        return iter([self[i] for i in range(self.length)])

    def __getitem__(self, i: Any) -> "TracedVar":
        if not isinstance(i, int) or self.index is not None or self.length is None:
            raise self._fail("indexing")
        if not -self.length <= i < self.length:
            raise IndexError(f"{self.name!r} has {self.length} items")
        return TracedVar(self.name, None, self.source_id, i % self.length, None, self.tracer)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("_"):  # protocol probes (copy, pickle, hasattr) must see "absent"
            raise AttributeError(attr)
        raise self._fail(f"attribute .{attr}")


class _Tracer:
    """Shared recording context of one trace: node ids, streams, first failure."""

    def __init__(self, name: str) -> None:
        self.graph = ProgramGraph([], name)
        self.next_id = 0
        self.failure: Optional[NotCompilable] = None

    def record_failure(self, err: NotCompilable) -> None:
        # Kept even if user code swallows the exception, so the trace still fails.
        if self.failure is None:
            self.failure = err

    def new_stream(self, parent: Optional[int], fork: Optional[int], index: int) -> Stream:
        s = Stream(len(self.graph.streams), parent, fork, index, [])
        self.graph.streams.append(s)
        return s

    def add(self, stream: Stream, cls: type[N], fields: dict[str, Any]) -> N:
        node = cls(id=self.next_id, **fields)
        self.next_id += 1
        stream.nodes.append(node)
        return node


def _method_name(method: Any) -> str:
    if method is None:
        return CHOICE_METHODS[0]
    name = getattr(method, "name", None)
    if name not in CHOICE_METHODS:
        raise not_compilable(f"the custom choices method {method!r} cannot run on the server")
    return name


def _overrides(params: Any) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(params).items() if v is not None}


class TracerProgramState:
    """A ProgramState look-alike that records nodes; see module docstring."""

    def __init__(self, tracer: _Tracer, stream: Stream,
                 defined: Optional[dict[str, tuple[int, Optional[int]]]] = None) -> None:
        self.tracer = tracer
        self.stream = stream
        # name -> (producing node id, statically known list length)
        self.defined: dict[str, tuple[int, Optional[int]]] = dict(defined or {})
        self.var_scopes: dict[str, int] = {}
        self.ret_value: Any = None
        self.ended = False

    # -- appending ----------------------------------------------------------
    def _add(self, cls: type[N], **fields: Any) -> N:
        if self.ended:
            raise RuntimeError("this program state has ended; no more expressions can be added")
        return self.tracer.add(self.stream, cls, fields)

    def __iadd__(self, other: Union[str, SglExpr]) -> "TracerProgramState":
        if other is None:
            raise ValueError("cannot append None to a program state")
        if isinstance(other, str):
            other = SglConstantText(other)
        if not isinstance(other, SglExpr):
            raise TypeError(f"cannot append {type(other).__name__}; use str or an sglite expression")
        self._record(other)
        return self

    def _record(self, expr: SglExpr) -> None:
        if isinstance(expr, SglExprList):
            for e in expr.exprs:
                self._record(e)
        elif isinstance(expr, SglConstantText):
            if expr.value:
                self._add(Fill, text=expr.value)
        elif isinstance(expr, TracedVar):
            self._add(VarRef, source=expr.source_id, name=expr.name, index=expr.index)
        elif isinstance(expr, SglArgument):
            if isinstance(expr.value, SglExpr):
                self._record(expr.value)
            else:
                self._add(Fill, text=str(expr.value))
        elif isinstance(expr, SglGen):
            params = _overrides(expr.sampling_params)
            json.dumps(params)  # everything in SglSamplingParams is JSON already
            gen = self._add(Gen, name=expr.name, sampling_params=params)
            n = params.get("n")
            self._define(expr.name, gen.id, n if isinstance(n, int) and n > 1 else None)
        elif isinstance(expr, SglSelect):
            sel = self._add(Select, name=expr.name, choices=list(expr.choices),
                            temperature=float(expr.temperature or 0.0), method=_method_name(expr.choices_method))
            self._define(expr.name, sel.id, None)
        elif isinstance(expr, SglRoleBegin):
            self._add(RoleBegin, role=expr.role)
        elif isinstance(expr, SglRoleEnd):
            self._add(RoleEnd, role=expr.role)
        elif isinstance(expr, SglVarScopeBegin):
            self._add(VarBegin, name=expr.name)
        elif isinstance(expr, SglVarScopeEnd):
            end = self._add(VarEnd, name=expr.name)
            self._define(expr.name, end.id, None)
        elif isinstance(expr, SglCommitLazy):
            pass  # forks commit their prefix on the server anyway
        elif isinstance(expr, SglImage):
            raise not_compilable("images are not supported by compiled programs")
        elif isinstance(expr, SglVariable):
            raise not_compilable("an SglVariable from another trace cannot be appended")
        else:
            raise not_compilable(f"{type(expr).__name__} cannot be compiled")

    def _define(self, name: Optional[str], node_id: int, length: Optional[int]) -> None:
        if name:
            self.defined[name] = (node_id, length)

    def _role_common(self, role: str, expr: Any = None):
        if expr is not None:
            self += SglExprList([SglRoleBegin(role)]) + expr + SglRoleEnd(role)
            return None

        @contextlib.contextmanager
        def role_scope():
            self._add(RoleBegin, role=role)
            yield
            self._add(RoleEnd, role=role)

        return role_scope()

    def system(self, expr: Any = None):
        return self._role_common("system", expr)

    def user(self, expr: Any = None):
        return self._role_common("user", expr)

    def assistant(self, expr: Any = None):
        return self._role_common("assistant", expr)

    @contextlib.contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        self._add(VarBegin, name=name)
        yield
        node = self._add(VarEnd, name=name)
        self._define(name, node.id, None)

    # -- reading ------------------------------------------------------------
    def __getitem__(self, name: str) -> TracedVar:
        return self.get_var(name)

    def get_var(self, name: str) -> TracedVar:
        if name not in self.defined:
            raise not_compilable(f"variable {name!r} is read before any node produces it")
        source, length = self.defined[name]
        return TracedVar(name, None, source, None, length, self.tracer)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def set_var(self, name: str, value: Any) -> None:
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise not_compilable(f"s[{name!r}] = ... needs a JSON value, got {type(value).__name__}") from None
        node = self._add(SetVar, name=name, value=value)
        self._define(name, node.id, len(value) if isinstance(value, list) else None)

    def __contains__(self, name: str) -> bool:
        return name in self.defined

    def _needs_value(self, what: str) -> NotCompilable:
        err = not_compilable(f"{what} needs generated text at trace time")
        self.tracer.record_failure(err)
        return err

    def text(self) -> str:
        raise self._needs_value("s.text()")

    def messages(self) -> list[dict[str, Any]]:
        raise self._needs_value("s.messages()")

    def get_meta_info(self, name: str) -> Any:
        raise self._needs_value("s.get_meta_info()")

    def text_iter(self, var_name: Optional[str] = None) -> Iterator[str]:
        raise self._needs_value("s.text_iter()")

    def sync(self) -> None:
        """Nothing runs while tracing."""

    def error(self) -> None:
        return None

    # -- forking ------------------------------------------------------------
    def fork(self, size: int = 1) -> "TracerStateGroup":
        if not isinstance(size, int) or size < 1:
            raise ValueError("fork size must be a positive integer")
        # The branches become the next ``size`` streams; the fork names them up front.
        first = len(self.tracer.graph.streams)
        node = self._add(Fork, n=size, children=list(range(first, first + size)))
        children = []
        for i in range(size):
            stream = self.tracer.new_stream(self.stream.id, node.id, i)
            assert stream.id == node.children[i]
            children.append(TracerProgramState(self.tracer, stream, self.defined))
        return TracerStateGroup(children, self, node.id)

    def copy(self) -> "TracerProgramState":
        return self.fork(1)[0]

    def __enter__(self) -> "TracerProgramState":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.ended = True


class TracerStateGroup(StateGroupBase):
    """The branches of a traced fork; ``join`` records a join node."""

    def __init__(self, states: list[TracerProgramState], src: TracerProgramState, fork_id: int) -> None:
        self.states = states
        self.src_state = src
        self.fork_id = fork_id

    def join(self, mode: str = "gather_variable") -> None:
        if mode not in ("gather_variable", "concate_and_append"):
            raise ValueError(f"unknown join mode {mode!r}")
        parent = self.src_state
        node = parent._add(Join, fork=self.fork_id, children=[s.stream.id for s in self.states], mode=mode)
        if mode == "gather_variable":
            # Same rule as the interpreter: names a branch has and the parent lacks become lists.
            base = set(parent.defined)
            for s in self.states:
                for name in s.defined:
                    if name not in base and name not in parent.defined:
                        parent.defined[name] = (node.id, len(self.states))
        for s in self.states:
            s.ended = True


def trace_program(func: Any, bound_kwargs: dict[str, Any], backend: Any = None) -> ProgramGraph:
    """Run ``func`` (an SglFunction or plain function) with ``bound_kwargs``; return its graph.

    Every parameter after ``s`` must be bound (or have a default). Raises
    :class:`NotCompilable` when the program's structure depends on generated values.
    """
    fn = getattr(func, "func", func)
    bound = {**getattr(func, "bind_arguments", {}), **bound_kwargs}
    params = list(inspect.signature(fn).parameters.values())[1:]
    missing = [p.name for p in params if p.name not in bound and p.default is p.empty
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if missing:
        raise NotCompilable(f"arguments {missing} are not bound: compile(**arguments) needs all of them")
    tracer = _Tracer(getattr(fn, "__name__", "program"))
    state = TracerProgramState(tracer, tracer.new_stream(None, None, 0))
    try:
        state.ret_value = fn(state, **bound)
    except NotCompilable as e:
        tracer.record_failure(e)
    except Exception as e:  # noqa: BLE001 - any failure while tracing means "interpret instead"
        tb = e.__traceback__
        frame_line = None
        while tb is not None:
            if not os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_SGLITE_DIR + os.sep):
                frame_line = (tb.tb_frame.f_code.co_filename, tb.tb_lineno)
            tb = tb.tb_next
        fname, lineno = frame_line or (None, None)
        line = linecache.getline(fname, lineno).strip() if fname and lineno is not None else None
        err = NotCompilable(f"the program raised {type(e).__name__}: {e} while tracing", fname, lineno, line)
        err.__cause__ = e
        tracer.record_failure(err)
    if tracer.failure is not None:
        raise tracer.failure
    graph = tracer.graph
    graph.ret_value = state.ret_value
    graph.root_sources = {name: src for name, (src, _) in state.defined.items()}
    return graph
