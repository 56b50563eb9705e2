"""The interpreter: run an SglFunction on threads, one StreamExecutor per stream.

``run_program`` and ``run_program_batch`` are what ``SglFunction.run`` and
``run_batch`` call; ``ProgramState``/``StreamExecutor`` live in their own modules
and are re-exported here.
"""
from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Union

from sglite.global_config import global_config
from sglite.lang.executor import StreamExecutor
from sglite.lang.program_state import ProgramState, ProgramStateGroup
from sglite.protocol.sampling import SglSamplingParams

logger = logging.getLogger(__name__)

__all__ = ["ProgramState", "ProgramStateGroup", "StreamExecutor", "cache_program", "run_program",
           "run_program_batch", "run_program_batch_iter"]


def resolve_backend(backend: Any) -> Any:
    """The given backend, else the default one; wraps an Engine or Runtime."""
    from sglite.backend import as_backend

    backend = backend if backend is not None else global_config.default_backend
    if backend is None:
        raise ValueError("no backend: call sglite.set_default_backend(...) or pass backend=")
    return as_backend(backend)


def run_program(func: Callable[..., Any], backend: Any, args: tuple, kwargs: dict[str, Any],
                default_sampling_params: SglSamplingParams, stream: bool = False,
                sync: bool = False, use_thread: bool = True) -> ProgramState:
    """Run ``func(s, *args, **kwargs)`` against ``backend``.

    Non-streaming: the user function runs on the caller's thread and its
    exception propagates; gens keep running on the worker (``sync`` waits).
    Streaming: the user function runs on its own thread and this returns at once;
    its exception is stored like a worker error.
    """
    backend = resolve_backend(backend)
    executor = StreamExecutor(backend, kwargs, default_sampling_params, stream=stream,
                              use_thread=use_thread)
    state = ProgramState(executor)

    if stream:
        def body() -> None:
            try:
                state.ret_value = func(state, *args, **kwargs)
            except BaseException as e:  # noqa: BLE001 - surfaced at the reader
                logger.warning("Error in program function: %s: %s", type(e).__name__, e)
                executor.fail_after_pending(e)
            finally:
                executor.end()

        threading.Thread(target=body, name="sglite-program", daemon=True).start()
        return state

    try:
        state.ret_value = func(state, *args, **kwargs)
    finally:
        executor.end()
    if sync:
        executor.sync()
    if global_config.verbosity >= 2:
        logger.info("program text:\n%s", state.text())
    return state


def _num_threads(num_threads: Union[str, int], batch_size: int) -> int:
    if num_threads == "auto":
        num_threads = max(96, 16 * (os.cpu_count() or 1))
    return max(1, min(int(num_threads), batch_size))


def run_program_batch(func: Callable[..., Any], backend: Any, batch_kwargs: list[dict[str, Any]],
                      default_sampling_params: SglSamplingParams, num_threads: Union[str, int] = "auto",
                      progress_bar: bool = False) -> list[ProgramState]:
    """Run one program per kwargs dict on a thread pool; results in input order."""
    if not batch_kwargs:
        return []
    backend = resolve_backend(backend)
    workers = _num_threads(num_threads, len(batch_kwargs))
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sglite-batch")
    futures = [
        pool.submit(run_program, func, backend, (), kw, default_sampling_params, False, True)
        for kw in batch_kwargs
    ]
    try:
        if progress_bar:
            from concurrent.futures import as_completed

            # progress_bar may be a bar that the caller already advanced (compiled part of a batch).
            bar: Any = progress_bar if hasattr(progress_bar, "update") else new_progress_bar(len(futures))
            for _ in as_completed(futures):
                bar.update(1)
            if bar is not progress_bar:
                bar.close()
        results = [f.result() for f in futures]
    except BaseException:
        # Ctrl-C (or an error): return now; programs that have not started never will.
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()
    return results


def new_progress_bar(total: int) -> Any:
    """A tqdm bar; ``tqdm.auto`` renders it as a widget in notebooks when ipywidgets is installed."""
    from tqdm.auto import tqdm

    return tqdm(total=total)


def run_program_batch_iter(func: Callable[..., Any], backend: Any, batch_kwargs: list[dict[str, Any]],
                           default_sampling_params: SglSamplingParams,
                           num_threads: Union[str, int] = "auto", chunk_size: int = 200):
    """``run_batch(generator_style=True)``: yield finished states in input order, submitting
    at most ``chunk_size`` programs at a time so that the first results arrive early."""
    backend = resolve_backend(backend)
    workers = _num_threads(num_threads, max(1, len(batch_kwargs)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sglite-batch") as pool:
        for start in range(0, len(batch_kwargs), chunk_size):
            futures = [pool.submit(run_program, func, backend, (), kw, default_sampling_params, False, True)
                       for kw in batch_kwargs[start:start + chunk_size]]
            for f in futures:
                yield f.result()


def cache_program(program: Any, backend: Any) -> None:
    """Prefill the program's static prefix (its text before the first gen) on ``backend``,
    so that later runs hit the prefix cache. Programs that cannot be traced are skipped."""
    from sglite.lang.plan import rendered_static_prefix
    from sglite.lang.tracer import NotCompilable, trace_program

    try:
        graph = trace_program(program, {})
    except NotCompilable as e:
        logger.info("cache_program: %s is not traceable (%s); nothing cached", program, e)
        return
    backend = resolve_backend(backend)
    prefix = rendered_static_prefix(graph.streams[0].nodes, backend.chat_template)
    if prefix:
        backend.commit_prefix(prefix)
