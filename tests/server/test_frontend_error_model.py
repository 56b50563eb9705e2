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
