"""Compiled-grammar cache with background compilation.

``get_or_submit(key)`` never blocks and never raises because of a bad spec:

* compiled and cached  -> ``(fresh grammar, None)``;
* cached failure       -> ``(InvalidGrammar(error), None)``;
* compiling / new      -> ``(None, future)``; ``poll(future)`` later gives a grammar, an
  InvalidGrammar, or None while it is still running.

Where the backend offers a ``worker_task`` (outlines-core does), the slow part runs in a
killable, memory-capped worker process (worker_pool.py): the timeout counts from the start
of the compile, the worker is killed at it, and a pathological spec fails only itself.
Otherwise ``backend.compile`` runs in a thread, whose late result is dropped at the timeout.

Failures (a ValueError from the compiler, any other exception, a timeout, a worker out of
memory) are cached as InvalidGrammar for ``failure_ttl_s`` only, so that resending the
same bad spec fails fast but a transient failure is retried later; ``reset`` (the
server's /flush_cache) drops them at once.  Entries are evicted least-recently-used beyond
``max_entries`` (pending compiles are never evicted).
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import json
import logging
import threading
import time
from typing import Any

from sglite_runtime.constrained.base import (
    DEFAULT_COMPILE_TIMEOUT_S,
    BaseGrammar,
    BaseGrammarBackend,
    GrammarKey,
    InvalidGrammar,
)
from sglite_runtime.constrained.specs import schema_to_str
from sglite_runtime.constrained.worker_pool import WorkerPool, shared_pool

logger = logging.getLogger(__name__)


def make_key(kind: str, spec: Any) -> GrammarKey:
    """Hashable cache key ``(kind, spec-string)``; dict schemas and choice lists are
    serialized canonically so equal specs share an entry."""
    if kind == "choices" and not isinstance(spec, str):
        return kind, json.dumps(list(spec))
    if kind == "json":
        return kind, schema_to_str(spec)
    return kind, spec if isinstance(spec, str) else str(spec)


#: How long a failed compile stays cached (seconds).
DEFAULT_FAILURE_TTL_S = 60.0
# A worker enforces its own timeout; the cache's check is only a backstop past it.
_WORKER_GRACE_S = 5.0


class _Entry:
    """One key: its result future (a compiled object or an InvalidGrammar), the time its
    compile started (None while queued) and the time it resolved."""

    __slots__ = ("future", "started", "key", "resolved", "in_worker")

    def __init__(self, key: GrammarKey) -> None:
        self.key = key
        self.future: cf.Future = cf.Future()
        self.started: float | None = None
        self.resolved: float | None = None
        self.in_worker = False


class GrammarCache:
    """LRU of compiled grammars, compiling misses in a thread pool."""

    def __init__(
        self,
        backend: BaseGrammarBackend,
        max_workers: int = 2,
        max_entries: int = 256,
        compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
        failure_ttl_s: float = DEFAULT_FAILURE_TTL_S,
        pool: WorkerPool | None = None,
    ) -> None:
        self.backend = backend
        self.max_entries = max_entries
        self.compile_timeout_s = compile_timeout_s
        self.failure_ttl_s = failure_ttl_s
        self.pool = pool if pool is not None else shared_pool()
        # Threads only wait on workers (or run thread compiles): as many as the pool has workers.
        max_workers = max(max_workers, self.pool.size)
        self._executor = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sglite-grammar")
        self._entries: collections.OrderedDict[GrammarKey, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()  # the compile threads' callbacks touch the futures only
        self.hits = 0
        self.misses = 0

    # -- public API -------------------------------------------------------------------
    def get_or_submit(self, key: GrammarKey) -> tuple[BaseGrammar | InvalidGrammar | None, cf.Future | None]:
        """A ready grammar (fresh, at the start state) / failure marker, or a future."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self._expired(entry):
                del self._entries[key]
                entry = None
            is_new = entry is None
            if entry is None:
                self.misses += 1
                entry = _Entry(key)
                self._entries[key] = entry
                self._evict_locked()
            else:
                self._entries.move_to_end(key)
                self.hits += 1
        if is_new:
            self._submit(entry)
        else:
            self._check_timeout(entry)
        if not entry.future.done():
            return None, entry.future
        return self._materialize(entry.future.result()), None

    def poll(self, future: cf.Future, timeout: float = 0.0) -> BaseGrammar | InvalidGrammar | None:
        """The grammar (or failure) once ``future`` resolved, else None (still compiling).

        Waits at most ``timeout`` seconds; enforces the compile timeout."""
        if not future.done():
            if timeout > 0:
                try:
                    future.result(timeout=timeout)
                except cf.TimeoutError:
                    pass
            if not future.done():
                entry = getattr(future, "_sglite_entry", None)
                if entry is not None:
                    self._check_timeout(entry)
                if not future.done():
                    return None
        return self._materialize(future.result())

    def get_error(self, key: GrammarKey) -> str | None:
        """The cached failure message of ``key``, if it failed."""
        entry = self._entries.get(key)
        if entry is None or not entry.future.done():
            return None
        result = entry.future.result()
        return result.error if isinstance(result, InvalidGrammar) else None

    def __len__(self) -> int:
        return len(self._entries)

    def reset(self) -> None:
        """Drop every finished entry, failures included (pending compiles keep their futures)."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.future.done()]:
                del self._entries[key]

    def shutdown(self) -> None:
        """Stop taking compiles (the shared worker processes stay for other caches)."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- internals --------------------------------------------------------------------
    def _submit(self, entry: _Entry) -> None:
        entry.future._sglite_entry = entry  # type: ignore[attr-defined]  # lets poll() find the timeout
        try:
            inner = self._executor.submit(self._compile, entry)
        except RuntimeError as exc:  # executor shut down
            self._resolve(entry, InvalidGrammar(f"grammar compiler unavailable: {exc}"))
            return
        inner.add_done_callback(lambda f: self._resolve(entry, f.result()))

    def _compile(self, entry: _Entry) -> Any:
        """Runs in a cache thread; returns the compiled object or an InvalidGrammar."""
        key = entry.key
        start = time.perf_counter()
        try:
            make_task = getattr(self.backend, "worker_task", None)
            task = make_task(key) if make_task is not None else None
            if task is None:
                entry.started = time.monotonic()
                compiled = self.backend.compile(key)
            else:
                entry.in_worker = True
                status, payload = self.pool.run(task[0], task[1], self.compile_timeout_s,
                                                on_start=lambda: setattr(entry, "started", time.monotonic()))
                if status != "ok":
                    logger.warning("grammar %s failed in its compile worker: %s", key[0], payload)
                    return InvalidGrammar(f"cannot compile {key[0]} constraint: {payload}")
                compiled = self.backend.finish_compile(key, payload)
        except ValueError as exc:
            logger.info("grammar %s rejected: %s", key[0], exc)
            return InvalidGrammar(str(exc))
        except Exception as exc:  # never let a compiler bug escape into the scheduler
            logger.exception("grammar %s failed to compile", key[0])
            return InvalidGrammar(f"grammar compilation failed: {type(exc).__name__}: {exc}")
        logger.debug("grammar %s compiled in %.1f ms", key[0], (time.perf_counter() - start) * 1e3)
        return compiled

    def _resolve(self, entry: _Entry, result: Any) -> None:
        with self._lock:
            if not entry.future.done():
                entry.resolved = time.monotonic()
                entry.future.set_result(result)

    def _expired(self, entry: _Entry) -> bool:
        """A cached failure older than the TTL (the spec gets another chance)."""
        return (entry.resolved is not None and time.monotonic() - entry.resolved > self.failure_ttl_s
                and isinstance(entry.future.result(), InvalidGrammar))

    def _check_timeout(self, entry: _Entry) -> None:
        if entry.started is None or entry.future.done():
            return  # still queued behind other compiles: its clock has not started
        limit = self.compile_timeout_s + (_WORKER_GRACE_S if entry.in_worker else 0.0)
        if time.monotonic() - entry.started > limit:
            logger.warning("grammar %s compile timed out after %.0f s", entry.key[0], self.compile_timeout_s)
            self._resolve(entry, InvalidGrammar(f"grammar compilation timed out after {self.compile_timeout_s:.0f} s"))

    def _materialize(self, result: Any) -> BaseGrammar | InvalidGrammar:
        if isinstance(result, InvalidGrammar):
            return result
        return self.backend.new_grammar(result)

    def _evict_locked(self) -> None:
        if len(self._entries) <= self.max_entries:
            return
        for key in list(self._entries):
            if len(self._entries) <= self.max_entries:
                break
            if self._entries[key].future.done():
                del self._entries[key]
