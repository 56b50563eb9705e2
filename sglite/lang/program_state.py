"""ProgramState (the ``s`` of a program) and ProgramStateGroup (the result of fork)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, AsyncIterator, Iterator, Optional, Union

from sglite.lang.executor import StreamExecutor
from sglite.lang.ir import (
    SglConstantText, SglExpr, SglExprList, SglRoleBegin, SglRoleEnd, SglVarScopeBegin, SglVarScopeEnd,
)
from sglite.lang.state_group import StateGroupBase
from sglite.protocol.stream_state import gathered_names

logger = logging.getLogger(__name__)

_WAIT_S = 0.5  # condition wait granularity: wake up to re-check errors/finish


# Per-chunk meta fields (the rest are cumulative and the latest value wins), as in SGLang.
_INCREMENTAL_META_KEYS = ("output_token_logprobs", "output_top_logprobs", "output_token_ids_logprobs")


def _merge_meta(pending: Optional[dict[str, Any]], meta: dict[str, Any]) -> dict[str, Any]:
    if pending is None:
        return dict(meta)
    merged = dict(meta)
    for key in _INCREMENTAL_META_KEYS:
        if key in meta or key in pending:
            merged[key] = list(pending.get(key) or []) + list(meta.get(key) or [])
    return merged


def _refuse_position_ids_offset(offset: Any) -> None:
    if offset is not None:
        raise ValueError("fork(position_ids_offset=...) is not supported: sglite's runtime assigns "
                         "positions from the text; fork without it")


class ProgramState:
    """The state of one running program: text, variables, messages.

    ``s += x`` enqueues and returns at once; ``s["x"]`` blocks until ``x`` is
    ready and re-raises the worker's original error if it never will be.
    """

    def __init__(self, stream_executor: StreamExecutor) -> None:
        self.stream_executor = stream_executor
        self.ret_value: Any = None

    # -- appending ----------------------------------------------------------
    def __iadd__(self, other: Union[str, SglExpr]) -> "ProgramState":
        if other is None:
            raise ValueError("cannot append None to a program state")
        if isinstance(other, str):
            other = SglConstantText(other)
        if not isinstance(other, SglExpr):
            raise TypeError(f"cannot append {type(other).__name__}; use str or an sglite expression")
        self.stream_executor.submit(other)
        return self

    def _role_common(self, role: str, expr: Optional[Union[str, SglExpr]] = None):
        if expr is not None:
            role_expr = SglExprList([SglRoleBegin(role)]) + expr + SglRoleEnd(role)
            self.stream_executor.submit(role_expr)
            return role_expr

        @contextlib.contextmanager
        def role_scope():
            self.stream_executor.submit(SglRoleBegin(role))
            yield
            self.stream_executor.submit(SglRoleEnd(role))

        return role_scope()

    def system(self, expr: Optional[Union[str, SglExpr]] = None):
        """Append ``expr`` as a system message, or ``with s.system():`` block form."""
        return self._role_common("system", expr)

    def user(self, expr: Optional[Union[str, SglExpr]] = None):
        """Append ``expr`` as a user message, or ``with s.user():`` block form."""
        return self._role_common("user", expr)

    def assistant(self, expr: Optional[Union[str, SglExpr]] = None):
        """Append ``expr`` as an assistant message, or ``with s.assistant():`` block form."""
        return self._role_common("assistant", expr)

    @contextlib.contextmanager
    def var_scope(self, name: str) -> Iterator[None]:
        """Capture all text appended inside the block as variable ``name``."""
        self.stream_executor.submit(SglVarScopeBegin(name))
        yield
        self.stream_executor.submit(SglVarScopeEnd(name))

    # -- reading ------------------------------------------------------------
    def __getitem__(self, name: str) -> Any:
        return self.get_var(name)

    def __setitem__(self, name: str, value: Any) -> None:
        self.set_var(name, value)

    def __contains__(self, name: str) -> bool:
        return name in self.stream_executor.variables

    def get_var(self, name: str) -> Any:
        """Block until ``name`` is ready; re-raise the worker's error if it failed."""
        return self.stream_executor.get_var(name)

    def set_var(self, name: str, value: Any) -> None:
        self.stream_executor.set_var(name, value)

    def get_meta_info(self, name: str) -> Any:
        """The runtime's ``meta_info`` for gen ``name`` (per-choice scores for a select)."""
        return self.stream_executor.get_meta_info(name)

    def text(self) -> str:
        """The whole text so far, after everything submitted has run."""
        self.sync()
        return self.stream_executor.text_

    def messages(self) -> list[dict[str, Any]]:
        """OpenAI-format messages of the finished roles."""
        self.sync()
        return self.stream_executor.messages_

    def sync(self) -> None:
        self.stream_executor.sync()

    def error(self) -> Optional[BaseException]:
        """The stored worker exception, if any step failed."""
        return self.stream_executor.error_

    # -- forking ------------------------------------------------------------
    def fork(self, size: int = 1, position_ids_offset: Optional[list[int]] = None) -> "ProgramStateGroup":
        """Split into ``size`` branches sharing the current text (and its KV cache).

        ``position_ids_offset`` (SGLang's, for its parallel-encoding experiment) is refused."""
        _refuse_position_ids_offset(position_ids_offset)
        children = self.stream_executor.fork(size)
        return ProgramStateGroup([ProgramState(c) for c in children], self)

    def copy(self, position_ids_offset: Optional[list[int]] = None) -> "ProgramState":
        """An independent branch; ``with s.copy() as c:`` ends it on exit."""
        return self.fork(1, position_ids_offset)[0]

    def __enter__(self) -> "ProgramState":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stream_executor.end()

    def __del__(self) -> None:
        try:
            self.stream_executor.end()
        except Exception:  # interpreter shutdown
            pass

    # -- streaming ----------------------------------------------------------
    def _iter_chunks(self, var: Optional[str]) -> Iterator[tuple[str, dict[str, Any]]]:
        ex = self.stream_executor
        if not ex.stream:
            yield (self.text() if var is None else self.get_var(var)), (
                {} if var is None else (ex.meta_info.get(var) or {}))
            return
        if var is None:
            pos = 0
            while True:
                with ex.cond:
                    while len(ex.text_) == pos and not ex.finished and ex.error_ is None:
                        ex.cond.wait(_WAIT_S)
                    chunk, pos, done = ex.text_[pos:], len(ex.text_), ex.finished or ex.error_ is not None
                if chunk:
                    yield chunk, {}
                if done:
                    return
        idx, pending = 0, None
        while True:
            with ex.cond:
                while True:
                    chunks = ex.stream_chunks.get(var, [])
                    event = ex.variable_events.get(var)
                    if idx < len(chunks) or (event is not None and event.is_set()):
                        break
                    if event is None and ex.finished:
                        break
                    ex.cond.wait(_WAIT_S)
                new = chunks[idx:]
                idx += len(new)
                done = event is None or event.is_set()
            for chunk, meta in new:
                if not chunk:  # nothing to show yet: carry its logprobs into the next chunk
                    pending = _merge_meta(pending, meta)
                    continue
                yield chunk, _merge_meta(pending, meta) if pending is not None else meta
                pending = None
            if done:
                if idx == 0:  # produced without streaming (var_scope, n > 1, ...): one piece
                    yield self.get_var(var), ex.meta_info.get(var) or {}
                elif var in ex.failed_vars and ex.error_ is not None:
                    raise ex.error_
                return

    def text_iter(self, var_name: Optional[str] = None) -> Iterator[str]:
        """Yield text deltas of the whole program (or of one variable) as they arrive."""
        for chunk, _ in self._iter_chunks(var_name):
            yield chunk

    async def text_async_iter(self, var_name: Optional[str] = None,
                              return_meta_data: bool = False) -> AsyncIterator[Any]:
        """Async form of :meth:`text_iter`; with ``return_meta_data`` yield ``(chunk, meta)``.

        Chunks are never empty. Each chunk's meta carries that chunk's own
        ``output_token_logprobs`` (those of tokens that produced no text yet are carried
        into the next chunk) and the runtime's cumulative counters
        (``completion_tokens``, ``output_token_logprobs_length``, ...).
        """
        loop = asyncio.get_running_loop()
        it = self._iter_chunks(var_name)
        done = object()
        while True:
            item: Any = await loop.run_in_executor(None, next, it, done)
            if item is done:
                return
            yield item if return_meta_data else item[0]

    def __repr__(self) -> str:
        return f"ProgramState({self.text()!r})"


class ProgramStateGroup(StateGroupBase):
    """The branches of ``s.fork(n)``; ``join`` gathers them back into the parent."""

    def __init__(self, states: list[ProgramState], src_state: ProgramState) -> None:
        self.states = states
        self.src_state = src_state

    def join(self, mode: str = "gather_variable") -> None:
        """Merge the branches into the parent.

        ``gather_variable``: every variable a branch created becomes a list in the
        parent. ``concate_and_append``: each branch's new text is appended to the
        parent, in branch order (plain text; no KV-cache splicing).
        """
        parent = self.src_state.stream_executor
        for s in self.states:
            s.sync()
        for s in self.states:
            if s.stream_executor.error_ is not None:
                raise s.stream_executor.error_
        if mode == "gather_variable":
            names = gathered_names(parent.variables, [s.stream_executor.variables for s in self.states])
            for name in names:
                values = [s.stream_executor.variables.get(name) for s in self.states]
                metas = [s.stream_executor.meta_info.get(name) for s in self.states]
                parent.set_var(name, values)
                parent.meta_info[name] = metas
        elif mode == "concate_and_append":
            for s in self.states:
                self.src_state += s.stream_executor.tx.since_fork()
        else:
            raise ValueError(f"unknown join mode {mode!r}")
        for s in self.states:
            s.stream_executor.end()
