"""run_batch shows a progress bar in every mode, and compile="auto" says why it interprets, as a
warning that is visible without any logging setup."""

from __future__ import annotations

import logging
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "frontend"))

from fake_runtime import FakeBackend, FakeModel  # noqa: E402
from test_compiler import CHATML, ProgramBackend  # noqa: E402

import sglite  # noqa: E402

N = 6


@sglite.function
def static(s, q):
    s += "Q: " + q + "\nA:" + sglite.gen("a", max_tokens=4)


@sglite.function
def dynamic(s, q):
    s += "Q: " + q + "\nA:" + sglite.gen("a", max_tokens=4)
    if s["a"] == "never":  # branches on a generated value: cannot be compiled
        s += "!"


def _bar_done(err: str) -> bool:
    return f"{N}/{N}" in err and "100%" in err


@pytest.mark.parametrize("func, backend_cls, mode, kwargs", [
    (static, FakeBackend, False, {}),
    (static, ProgramBackend, "auto", {}),  # compiled: one call
    (static, ProgramBackend, True, {}),
    (dynamic, ProgramBackend, "auto", {}),  # falls back to the interpreter
    (static, FakeBackend, False, {"generator_style": True}),
], ids=["interpreted", "auto-compiled", "compiled", "auto-fallback", "generator"])
def test_run_batch_progress_bar_in_every_mode(capsys, func, backend_cls, mode, kwargs):
    backend = backend_cls(FakeModel(chat_template=CHATML))
    states = func.run_batch([{"q": f"q{i}"} for i in range(N)], backend=backend, compile=mode,
                            progress_bar=True, temperature=0, **kwargs)
    states = list(states)
    assert len(states) == N and all(isinstance(st["a"], str) for st in states)
    assert _bar_done(capsys.readouterr().err)


def test_auto_fallback_reason_is_one_visible_warning(caplog):
    backend = ProgramBackend(FakeModel(chat_template=CHATML))
    with caplog.at_level(logging.WARNING):
        dynamic.run_batch([{"q": f"q{i}"} for i in range(N)], backend=backend, compile="auto")
        dynamic.run(q="x", backend=backend, compile="auto")
    warnings = [r for r in caplog.records if r.name == "sglite.lang.compiler"]
    assert [r.levelno for r in warnings] == [logging.WARNING, logging.WARNING]
    assert f"{N} of {N} programs" in warnings[0].getMessage()
    assert "interpreter" in warnings[1].getMessage()


def test_bad_regex_is_a_value_error_at_build_time(capsys):
    @sglite.function
    def bad(s):
        s += "x" + sglite.gen("a", regex="(ab")

    with pytest.raises(ValueError, match=r"invalid regex '\(ab'"):
        bad.run(backend=FakeBackend(FakeModel()))


def test_ctrl_c_in_run_batch_returns_and_cancels_the_rest():
    import _thread
    import threading
    import time

    model = FakeModel()
    model.stream_delay = 0.0
    backend = FakeBackend(model)
    started = []

    @sglite.function
    def slow(s, i):
        started.append(i)
        time.sleep(0.3)
        s += "x" + sglite.gen("a", max_tokens=2)

    threading.Timer(0.2, _thread.interrupt_main).start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        slow.run_batch([{"i": i} for i in range(40)], backend=backend, num_threads=2)
    assert time.monotonic() - t0 < 1.0  # not 40 x 0.3 s / 2 threads
    time.sleep(0.8)
    assert len(started) <= 6  # the queued programs were cancelled
