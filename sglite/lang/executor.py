"""StreamExecutor: one program stream = one FIFO queue + one worker thread.

The user's thread only enqueues expressions (``submit``); the worker executes
them strictly in order, one blocking backend call per gen/select. Variables are
published through per-name events, so ``s["x"]`` blocks only until ``x`` exists.
A worker failure is kept and re-raised, unchanged, by every read that it
prevented (SGLang surfaced these as a bare ``KeyError``).
"""
from __future__ import annotations

import copy
import logging
import queue
import threading
import uuid
from typing import Any, Optional

from sglite.lang.ir import (
    SglArgument, SglCommitLazy, SglConstantText, SglExpr, SglExprList, SglGen, SglImage,
    SglRoleBegin, SglRoleEnd, SglSelect, SglSeparateReasoning, SglVarScopeBegin, SglVarScopeEnd,
    SglVariable,
)
from sglite.lang.reasoning import split_reasoning
from sglite.protocol.chat_template import ChatTemplate
from sglite.protocol.sampling import SglSamplingParams, typed_completion
from sglite.protocol.stream_state import StreamText

logger = logging.getLogger(__name__)


def _walk(expr: SglExpr):
    if isinstance(expr, SglExprList):
        for e in expr.exprs:
            yield from _walk(e)
    else:
        yield expr


def _close_typed(params: SglSamplingParams, text: str, name: Optional[str]) -> str:
    tail = typed_completion(params.dtype, text)
    if tail:
        logger.warning("typed gen %r (dtype=%s) ended early at %r; closed with %r",
                       name, params.dtype, text[-20:], tail)
    return tail


class _RaiseError(SglExpr):
    """Internal queue item: fail the stream with ``error`` at this point."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


class StreamExecutor:
    """Executes one stream of a program on its own worker thread."""

    def __init__(self, backend: Any, arguments: dict[str, Any],
                 default_sampling_params: SglSamplingParams, stream: bool = False,
                 chat_template: Optional[ChatTemplate] = None, use_thread: bool = True) -> None:
        self.sid = uuid.uuid4().hex
        self.backend = backend
        self.arguments = arguments
        self.default_sampling_params = default_sampling_params
        self.stream = stream
        self.use_thread = use_thread
        if chat_template is None:
            chat_template = backend.chat_template if backend is not None else ChatTemplate()
        self.chat_template = chat_template

        self.tx = StreamText()  # text, messages, roles, var scopes: shared with the program executor
        self.variables: dict[str, Any] = {}
        self.variable_events: dict[str, threading.Event] = {}
        # Per-node events: a name generated twice must not be released by the first gen.
        self._node_events: dict[int, list[threading.Event]] = {}
        self.meta_info: dict[str, Any] = {}
        self.stream_chunks: dict[str, list[tuple[str, dict[str, Any]]]] = {}
        self.images_: list[str] = []
        self.error_: Optional[BaseException] = None
        self.failed_vars: set[str] = set()
        self.finished = False
        self._ended = False
        self.cond = threading.Condition()

        self.queue: "queue.Queue[Optional[SglExpr]]" = queue.Queue()
        if use_thread:
            self.worker = threading.Thread(target=self._worker, name=f"sglite-stream-{self.sid[:8]}",
                                           daemon=True)
            self.worker.start()

    # The stream's text lives in ``self.tx``; these names are what the program state reads.
    @property
    def text_(self) -> str:
        return self.tx.text

    @text_.setter
    def text_(self, value: str) -> None:
        self.tx.text = value

    @property
    def messages_(self) -> list[dict[str, Any]]:
        return self.tx.messages

    # -- user-thread API ----------------------------------------------------
    def submit(self, expr: SglExpr) -> None:
        """Enqueue ``expr``; register events for the variables it will produce."""
        if self._ended:
            raise RuntimeError("this program state has ended; no more expressions can be added")
        for node in _walk(expr):
            if isinstance(node, SglImage) and not self.backend.supports_images():
                raise ValueError("this model does not accept images")
            names = [getattr(node, "name", None)]
            if isinstance(node, SglSeparateReasoning):
                names = [node.process_name_for_reasoning(n) for n in node.names]
            elif not isinstance(node, (SglGen, SglSelect, SglVarScopeBegin)):
                names = []
            for name in filter(None, names):
                with self.cond:
                    event = threading.Event()
                    self.variable_events[name] = event
                    self._node_events.setdefault(node.node_id, []).append(event)
                    self.failed_vars.discard(name)
        if self.use_thread:
            self.queue.put(expr)
        else:
            self._run_one(expr)

    def sync(self) -> None:
        """Wait until everything submitted so far has been executed."""
        if self.use_thread:
            try:
                self.queue.join()
            except KeyboardInterrupt:
                self.interrupt()
                raise

    def interrupt(self) -> None:
        """Ctrl-C while waiting on this stream: abort its in-flight request (on backends that can,
        e.g. the Engine) and skip what is still queued."""
        self.fail(KeyboardInterrupt("the program was interrupted"))
        cancel = getattr(self.backend, "cancel_threads", None)
        if callable(cancel) and self.use_thread:
            cancel([self.worker.ident])

    def end(self) -> None:
        """No more expressions will come; the worker exits after draining. Idempotent."""
        if self._ended:
            return
        self._ended = True
        if self.use_thread:
            self.queue.put(None)
        else:
            self._mark_finished()

    def text(self) -> str:
        """The stream's text after everything submitted so far has run."""
        self.sync()
        return self.text_

    def messages(self) -> list[dict[str, Any]]:
        self.sync()
        return self.messages_

    def error(self) -> Optional[BaseException]:
        return self.error_

    def get_var(self, name: str) -> Any:
        event = self.variable_events.get(name)
        if event is None and name not in self.variables:
            self.sync()  # it may still be on the way, e.g. through a text-only path
            event = self.variable_events.get(name)
        if event is not None:
            try:
                event.wait()
            except KeyboardInterrupt:
                self.interrupt()
                raise
        if name in self.failed_vars or name not in self.variables:
            if isinstance(self.error_, ValueError):  # the caller's mistake: the message is enough
                raise self.error_.with_traceback(None) from None
            if self.error_ is not None:
                raise self.error_
            raise KeyError(f"variable {name!r} was never produced by this program")
        return self.variables[name]

    def set_var(self, name: str, value: Any) -> None:
        with self.cond:
            self.variables[name] = value
            self.variable_events.setdefault(name, threading.Event()).set()
            self.cond.notify_all()

    def get_meta_info(self, name: str) -> Any:
        self.get_var(name)
        return self.meta_info.get(name)

    def fail(self, error: BaseException) -> None:
        """Record ``error`` and release every waiter (used for user-thread errors too)."""
        with self.cond:
            if self.error_ is None:
                self.error_ = error
            for name, event in self.variable_events.items():
                if not event.is_set():
                    self.failed_vars.add(name)
                    event.set()
            for events in self._node_events.values():
                for event in events:
                    event.set()
            self._node_events.clear()
            self.cond.notify_all()

    def fail_after_pending(self, error: BaseException) -> None:
        """Record ``error`` once the already-submitted work has run (user-thread errors)."""
        if self.use_thread and not self._ended:
            self.queue.put(_RaiseError(error))
        else:
            self.fail(error)

    def fork(self, size: int) -> list["StreamExecutor"]:
        """Copy this stream into ``size`` new executors after committing the prefix."""
        if size > 1:
            self.submit(SglCommitLazy())
        self.sync()
        children = []
        for _ in range(size):
            child = StreamExecutor(self.backend, self.arguments, self.default_sampling_params,
                                   self.stream, self.chat_template, self.use_thread)
            with self.cond:
                child.tx = self.tx.fork()
                child.variables = copy.copy(self.variables)
                child.meta_info = copy.copy(self.meta_info)
                child.images_ = list(self.images_)
                child.error_ = self.error_
                child.failed_vars = set(self.failed_vars)
            for name in child.variables:
                child.variable_events[name] = threading.Event()
                child.variable_events[name].set()
            children.append(child)
        return children

    # -- worker -------------------------------------------------------------
    def _worker(self) -> None:
        while True:
            expr = self.queue.get()
            try:
                if expr is None:
                    self._mark_finished()
                    return
                self._run_one(expr)
            finally:
                self.queue.task_done()

    def _run_one(self, expr: SglExpr) -> None:
        if self.error_ is not None:
            self.fail(self.error_)  # skip: an earlier step failed; release new waiters
            return
        try:
            self._execute(expr)
        except BaseException as e:  # noqa: BLE001 - stored and re-raised at the reader
            # A bad input is re-raised where the program reads it; only unexpected errors are logged.
            if not isinstance(e, ValueError) and self.error_ is None:  # not after Ctrl-C's interrupt()
                logger.warning("Error in stream_executor: %s: %s", type(e).__name__, e)
            self.fail(e)

    def _mark_finished(self) -> None:
        with self.cond:
            self.finished = True
            self.cond.notify_all()

    def _append(self, text: str) -> None:
        with self.cond:
            self.text_ += text
            self.cond.notify_all()

    def _publish(self, name: Optional[str], value: Any, meta: Any = None,
                 node: Optional[SglExpr] = None) -> None:
        if not name:
            return
        with self.cond:
            self.variables[name] = value
            if meta is not None:
                self.meta_info[name] = meta
            events = self._node_events.get(node.node_id) if node is not None else None
            if events:
                events.pop(0).set()
                if not events:
                    assert node is not None  # events exist only for a node
                    del self._node_events[node.node_id]
            else:
                self.variable_events.setdefault(name, threading.Event()).set()
            self.cond.notify_all()

    def _execute(self, expr: SglExpr) -> None:
        if isinstance(expr, _RaiseError):
            raise expr.error
        if isinstance(expr, SglExprList):
            for e in expr.exprs:
                self._execute(e)
        elif isinstance(expr, SglConstantText):
            self._append(expr.value)
        elif isinstance(expr, SglGen):
            self._execute_gen(expr)
        elif isinstance(expr, SglSelect):
            self._execute_select(expr)
        elif isinstance(expr, SglRoleBegin):
            self._execute_role_begin(expr.role)
        elif isinstance(expr, SglRoleEnd):
            self._execute_role_end(expr.role)
        elif isinstance(expr, SglImage):
            data = expr.to_base64()
            self.images_.append(data)
            self.tx.role_image(data)
            self._append(self.chat_template.image_token or "")
        elif isinstance(expr, SglVarScopeBegin):
            self.tx.var_begin(expr.name, expr)
        elif isinstance(expr, SglVarScopeEnd):
            with self.cond:
                captured, node = self.tx.var_end(expr.name)
            self._publish(expr.name, captured, node=node)
        elif isinstance(expr, SglSeparateReasoning):
            self._execute_separate_reasoning(expr)
        elif isinstance(expr, SglCommitLazy):
            self.backend.commit_prefix(self.text_)  # skips an empty text
        elif isinstance(expr, SglArgument):
            self._append(str(expr.value))
        elif isinstance(expr, SglVariable):
            raise TypeError("a traced SglVariable cannot be interpreted; read the value with s[name]")
        else:
            raise TypeError(f"unknown expression {type(expr).__name__}")

    def _prompt(self) -> Any:
        """The text so far; for a chat-API backend (``is_chat_model``) the finished messages,
        which only works when the gen opens an assistant message (as in SGLang)."""
        if not getattr(self.backend, "is_chat_model", False):
            return self.text_
        if self.tx.cur_role != "assistant" or self.text_[self.tx.cur_role_begin_pos:].strip():
            raise ValueError("on a chat model a gen must be the whole content of an assistant message: "
                             "s += sglite.assistant(sglite.gen(...))")
        return list(self.messages_)

    def _execute_gen(self, expr: SglGen) -> None:
        params = self.default_sampling_params.override(expr.sampling_params)
        name = expr.name
        images = list(self.images_) or None
        prompt = self._prompt()
        if self.stream and (params.n or 1) == 1:
            chunks: list[tuple[str, dict[str, Any]]] = []
            value, meta = "", {}
            logprobs: list[Any] = []
            with self.cond:
                if name:
                    self.stream_chunks[name] = chunks
                    self.variables.pop(name, None)
            for delta, chunk_meta in self.backend.generate_stream(prompt, params, images):
                with self.cond:
                    self.text_ += delta
                    value += delta
                    chunks.append((delta, chunk_meta))
                    self.cond.notify_all()
                logprobs.extend(chunk_meta.get("output_token_logprobs") or [])
                meta = chunk_meta
            tail = _close_typed(params, value, name)
            if tail:
                with self.cond:
                    self.text_ += tail
                    value += tail
                    chunks.append((tail, dict(meta, output_token_logprobs=[])))
                    self.cond.notify_all()
            if "output_token_logprobs" in meta:
                meta = dict(meta, output_token_logprobs=logprobs)
            self._publish(name, value, meta, expr)
            return
        text, meta = self.backend.generate(prompt, params, images)
        if isinstance(text, list):
            text = [t + _close_typed(params, t, name) for t in text]
        else:
            text += _close_typed(params, text, name)
        # n > 1: the variable is the list of samples; the text continues with sample 0.
        self._append(text[0] if isinstance(text, list) else text)
        self._publish(name, text, meta, expr)

    def _execute_select(self, expr: SglSelect) -> None:
        images = list(self.images_) or None
        decision = self.backend.select(self.text_, expr.choices, expr.temperature,
                                       expr.choices_method, images)
        self._append(decision.decision)
        if expr.name:
            with self.cond:
                self.stream_chunks[expr.name] = [(decision.decision, decision.meta_info)]
        self._publish(expr.name, decision.decision, decision.meta_info, expr)

    def _execute_separate_reasoning(self, expr: SglSeparateReasoning) -> None:
        for name in expr.names:
            value = self.variables.get(name)
            if not isinstance(value, str):
                raise TypeError(f"separate_reasoning needs one string in {name!r} (n > 1 is not supported)")
            reasoning, answer = split_reasoning(value, expr.model_type)
            with self.cond:
                at = self.text_.rfind(value)  # the gen's own text: keep only the answer there
                if at >= 0:
                    self.text_ = self.text_[:at] + answer + self.text_[at + len(value):]
                self.variables[name] = answer
            self._publish(expr.process_name_for_reasoning(name), reasoning, node=expr)

    def _execute_role_begin(self, role: str) -> None:
        with self.cond:
            self.tx.role_begin(role, self.chat_template)
            self.cond.notify_all()

    def _execute_role_end(self, role: str) -> None:
        with self.cond:
            self.tx.role_end(role, self.chat_template)
            self.cond.notify_all()
