"""Killable, memory-capped grammar compile workers (issue 13 item 3).

A grammar compile can run away: ``a{100000}`` builds a huge automaton for minutes and
gigabytes.  A thread cannot be stopped, so compiles run in worker *processes*
(``compile_worker.py``, torch-free, started as a script):

* each worker caps its own address space with ``RLIMIT_AS`` (``mem_bytes``), so a runaway
  compile dies of its own allocation failure instead of growing the scheduler;
* ``run`` counts the timeout from the moment a worker takes the job (not from submission,
  so a job queued behind a slow one is not charged for it), and kills the worker at the
  timeout;
* a killed or crashed worker is replaced by a fresh one on the next job, so one
  pathological spec fails only itself while the other workers keep compiling.

One pool per process (``shared_pool``): jobs are self-contained (target and arguments), so
every GrammarCache of the process can share the same few workers.
"""

from __future__ import annotations

import logging
import os
import queue
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable

logger = logging.getLogger(__name__)

WORKER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "compile_worker.py")

#: Default address-space cap of one worker; a compile that needs more fails as "out of memory".
DEFAULT_WORKER_MEM_BYTES = int(os.environ.get("SGLITE_GRAMMAR_WORKER_MEM_MB", "2048")) * 2**20

#: Default number of worker processes (at least 2, so one slow compile never stalls the rest).
DEFAULT_NUM_WORKERS = 3


class _Worker:
    """One worker process and its two pipe ends."""

    def __init__(self, mem_bytes: int) -> None:
        job_r, job_w = os.pipe()
        res_r, res_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, WORKER_SCRIPT, str(job_r), str(res_w), str(mem_bytes), str(os.getpid())],
                pass_fds=(job_r, res_w), stdin=subprocess.DEVNULL, close_fds=True)
        finally:
            os.close(job_r)
            os.close(res_w)
        self.jobs = Connection(job_w, readable=False)
        self.results = Connection(res_r, writable=False)

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        self.jobs.close()
        self.results.close()


class WorkerPool:
    """At most ``size`` worker processes, started on demand, replaced when killed."""

    def __init__(self, size: int = DEFAULT_NUM_WORKERS, mem_bytes: int = DEFAULT_WORKER_MEM_BYTES) -> None:
        self.size = max(2, size)
        self.mem_bytes = mem_bytes
        self._slots = threading.BoundedSemaphore(self.size)
        self._idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
        self._all: set[_Worker] = set()
        self._lock = threading.Lock()
        self.killed = 0  # workers killed at a timeout or lost to a crash (for tests/metrics)

    def run(self, target: str, args: tuple, timeout_s: float,
            on_start: Callable[[], None] | None = None) -> tuple[str, Any]:
        """Run ``target(*args)`` in a worker; ``("ok", result)``, ``("error", message)``.

        Blocks the calling thread until a worker is free; the timeout starts when the job is
        handed to the worker (``on_start`` is called then)."""
        with self._slots:
            worker = self._take()
            try:
                worker.jobs.send((target, args))
            except (OSError, ValueError):  # the idle worker died (e.g. killed from outside)
                self._drop(worker)
                worker = self._take()
                worker.jobs.send((target, args))
            start = time.monotonic()
            if on_start is not None:
                on_start()
            try:
                ready = worker.results.poll(timeout_s)
                reply = worker.results.recv() if ready else None
            except (EOFError, OSError):
                reply = False
            if reply is None:
                self._drop(worker)
                return "error", f"grammar compilation timed out after {time.monotonic() - start:.0f} s"
            if reply is False:
                code = worker.proc.wait()
                self._drop(worker)
                why = "ran out of memory" if code in (-6, -9, 134, 137) else f"crashed (exit code {code})"
                return "error", f"grammar compilation {why}"
            self._idle.put(worker)
            return reply

    def prestart(self, count: int = 1) -> None:
        """Start up to ``count`` idle workers now, in the background, so that the first
        constrained request does not pay a worker's start (~0.2 s)."""
        def start() -> None:
            with self._lock:
                missing = max(0, min(count, self.size) - len(self._all))
            for _ in range(missing):
                worker = _Worker(self.mem_bytes)
                with self._lock:
                    self._all.add(worker)
                self._idle.put(worker)

        threading.Thread(target=start, daemon=True, name="sglite-grammar-prestart").start()

    def _take(self) -> _Worker:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            worker = _Worker(self.mem_bytes)
            with self._lock:
                self._all.add(worker)
            return worker

    def _drop(self, worker: _Worker) -> None:
        self.killed += 1
        with self._lock:
            self._all.discard(worker)
        worker.kill()

    def pids(self) -> list[int]:
        with self._lock:
            return [w.proc.pid for w in self._all]

    def shutdown(self) -> None:
        """Kill every worker (idle or busy); later jobs start new ones."""
        with self._lock:
            workers, self._all = list(self._all), set()
        while True:
            try:
                self._idle.get_nowait()
            except queue.Empty:
                break
        for worker in workers:
            worker.kill()


_shared: WorkerPool | None = None
_shared_lock = threading.Lock()


def shared_pool() -> WorkerPool:
    """The process-wide pool (workers exit when this process closes their pipes)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = WorkerPool()
        return _shared
