"""sglite.Engine as a good citizen: dead or shut-down engines raise at once, Ctrl-C and abandoned
streams abort exactly their requests, input errors are one-line ValueErrors, logging is left alone."""

from __future__ import annotations

import _thread
import asyncio
import logging
import os
import signal
import threading
import time
import traceback

import pytest

import sglite
from sglite_runtime.entrypoints.engine import EngineDeadError

# Several seconds of work on this model (16 x 1000 decode steps): "idle within 1.5 s" proves an abort.
LONG = {"max_new_tokens": 1000, "temperature": 0, "ignore_eos": True}
BATCH = ["keep going"] * 16


def assert_idle_soon(engine, within: float = 1.5) -> None:
    deadline = time.monotonic() + within
    while True:
        s = engine.get_server_info()["internal_states"][0]
        pool = s["kv_pool"]
        idle = s["num_running_reqs"] == 0 and s["num_waiting_reqs"] == 0
        if idle and pool["available"] + pool["evictable"] == pool["total"]:
            assert not engine.tokenizer_manager.rid_to_state
            return
        assert time.monotonic() < deadline, s
        time.sleep(0.05)


@pytest.fixture(scope="module")
def user_log():
    """The application's own logging, set up before the engine: it must survive."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    handler, old_level = Keep(), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield records, handler
    root.removeHandler(handler)
    root.setLevel(old_level)


@pytest.fixture(scope="module")
def engine(tiny_llama_path, user_log):
    with sglite.Engine(model_path=tiny_llama_path, max_total_tokens=4096) as e:
        yield e


def test_engine_leaves_user_logging_alone(engine, user_log):
    records, handler = user_log
    root = logging.getLogger()
    assert handler in root.handlers and root.level == logging.INFO
    logging.getLogger("my.app").info("still here")
    assert records[-1].getMessage() == "still here"


def test_bad_input_is_one_line_value_error_with_short_traceback(engine):
    for kwargs in ({"sampling_params": {"temperature": -1}}, {"sampling_params": {"regex": "(ab"}}):
        with pytest.raises(ValueError) as info:
            engine.generate("hi", **kwargs)
        assert "\n" not in str(info.value)
        frames = traceback.extract_tb(info.value.__traceback__)
        assert len(frames) <= 4, [f.name for f in frames]  # the call, generate, _run, the re-raise
        assert info.value.__cause__ is None and info.value.__suppress_context__


def test_keyboard_interrupt_aborts_that_call_only(engine):
    other = threading.Thread(target=lambda: results.append(engine.generate("other", {"max_new_tokens": 24,
                                                                                    "temperature": 0})))
    results: list = []
    timer = threading.Timer(0.5, _thread.interrupt_main)  # Ctrl-C while generate() waits
    timer.start()
    other.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        engine.generate(BATCH, LONG)
    assert time.monotonic() - t0 < 3
    other.join(60)
    assert results and results[0]["meta_info"]["completion_tokens"] > 0
    assert_idle_soon(engine)
    assert engine.generate("after", {"max_new_tokens": 2})["meta_info"]["completion_tokens"] == 2


def test_breaking_out_of_a_stream_aborts_it(engine):
    for chunk in engine.generate(BATCH, LONG, stream=True):
        break
    assert_idle_soon(engine)


def test_cancelled_await_aborts_it(engine):
    async def main():
        task = asyncio.ensure_future(engine.async_generate(BATCH, LONG))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await engine.async_generate("after", {"max_new_tokens": 2})

    out = asyncio.run(main())
    assert out["meta_info"]["completion_tokens"] == 2
    assert_idle_soon(engine)


def test_keyboard_interrupt_aborts_a_running_program(engine):
    @sglite.function
    def long_program(s):
        s += "Once" + sglite.gen("story", max_tokens=1000, ignore_eos=True)
        s += "." + sglite.gen("more", max_tokens=1000, ignore_eos=True)

    # A real SIGINT (what Jupyter's stop button sends): it wakes the main thread's blocking wait.
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.monotonic()
    state = long_program.run(backend=sglite.EngineBackend(engine), temperature=0)
    with pytest.raises(KeyboardInterrupt):
        state["story"]
    assert time.monotonic() - t0 < 3
    assert_idle_soon(engine)  # the gen was aborted and the second one never sent
    with pytest.raises(KeyboardInterrupt):
        state["more"]


def test_missing_model_path_is_one_line():
    with pytest.raises(ValueError, match="does not exist") as info:
        sglite.Engine(model_path="/no/such/model")
    assert "\n" not in str(info.value)


def test_shutdown_and_dead_engines_raise_at_once(engine):
    """Last in this module: it kills the module's engine."""
    llm = engine
    sglite.set_default_backend(sglite.EngineBackend(llm))

    @sglite.function
    def prog(s):
        s += "Hi" + sglite.gen("x", max_tokens=4)

    # The scheduler dies in the middle of a call: the call raises within seconds.
    sched = next(p for p in llm._procs.procs if "scheduler" in p.name)
    threading.Timer(0.5, os.kill, (sched.pid, signal.SIGKILL)).start()
    t0 = time.monotonic()
    with pytest.raises(EngineDeadError, match="died"):
        llm.generate(BATCH, LONG)
    assert time.monotonic() - t0 < 5
    with pytest.raises(EngineDeadError):
        llm.generate("again", {"max_new_tokens": 2})
    llm.shutdown()
    t0 = time.monotonic()
    for call in (lambda: llm.generate("x"), llm.get_server_info, llm.flush_cache,
                 lambda: next(iter(llm.generate("x", stream=True))), lambda: prog.run()["x"]):
        with pytest.raises(EngineDeadError):
            call()
    assert time.monotonic() - t0 < 2
    sglite.set_default_backend(None)
