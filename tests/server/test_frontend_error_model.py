"""One error model through the server: bad input is a one-line ValueError in programs (interpreted,
streamed and compiled), as on sglite.Engine (tests/notebook/test_engine_lifecycle.py)."""

from __future__ import annotations

import pytest

import sglite


@sglite.function
def prog(s, rx, temp):
    s += "Q: hi A:" + sglite.gen("x", max_tokens=8, regex=rx, temperature=temp)


# A regex Python accepts but the grammar engine cannot compile, and an out-of-range sampling value.
CASES = [(r"(?=a)a", 0.0, "regex"), (None, -1.0, "temperature")]


@pytest.mark.parametrize("rx, temp, word", CASES, ids=["lookahead", "temperature"])
@pytest.mark.parametrize("mode", [False, True, "stream"])
def test_bad_input_raises_value_error_at_the_variable(server, rx, temp, word, mode):
    ep = sglite.RuntimeEndpoint(server.url)
    kwargs = {"stream": True} if mode == "stream" else {"compile": mode}
    state = prog.run(rx=rx, temp=temp, backend=ep, **kwargs)
    with pytest.raises(ValueError, match=word) as info:
        state["x"]  # never '' and never a RuntimeError
    assert "\n" not in str(info.value)


def test_bad_regex_fails_when_the_program_is_built(server):
    ep = sglite.RuntimeEndpoint(server.url)
    with pytest.raises(ValueError, match="invalid regex"):
        prog.run(rx="(ab", temp=0.0, backend=ep)


def test_ctrl_c_in_a_program_aborts_its_request_on_the_server(server):
    """Ctrl-C while a program waits on a variable aborts that gen on the server too (by the rid the
    endpoint tagged it with), as on the Engine: the server is idle soon after, not minutes later."""
    import os
    import signal
    import threading
    import time

    @sglite.function
    def long_program(s):
        # 8 samples x 1000 tokens: many seconds of decode, so "idle within 1.5 s" proves an abort.
        s += "Once" + sglite.gen("story", max_tokens=1000, n=8, ignore_eos=True, temperature=0)

    ep = sglite.RuntimeEndpoint(server.url)
    # A real SIGINT (what Jupyter's stop button sends) while the main thread waits on the variable.
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    state = long_program.run(backend=ep)
    with pytest.raises(KeyboardInterrupt):
        state["story"]
    deadline = time.monotonic() + 1.5
    while True:
        s = ep.get_server_info()["internal_states"][0]
        if s["num_running_reqs"] == 0 and s["num_waiting_reqs"] == 0:
            break
        assert time.monotonic() < deadline, f"the interrupted gen still runs on the server: {s}"
        time.sleep(0.1)
