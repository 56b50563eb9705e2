"""ProgramState semantics on the in-process fake backend."""
from __future__ import annotations

import json

import pytest

import sglite
from fake_runtime import CANNED, FakeBackend, FakeModel


def _gen_requests(model):
    return [r for r in model.requests if (r.get("sampling_params") or {}).get("max_new_tokens")]


def test_gen_appends_and_stores(backend, model):
    @sglite.function
    def f(s, q):
        s += "Q: " + q + "\nA:"
        s += sglite.gen("answer", max_tokens=4)

    state = f.run(q="why?")
    answer = " lorem ipsum dolor sit"
    assert state["answer"] == answer
    assert state.text() == "Q: why?\nA:" + answer
    req = model.requests[-1]
    assert req["text"] == "Q: why?\nA:"
    assert req["sampling_params"]["max_new_tokens"] == 4
    assert req["sampling_params"]["temperature"] == 1.0  # run() default
    assert state.get_meta_info("answer")["completion_tokens"] == 4


def test_run_defaults_and_gen_overrides(backend, model):
    @sglite.function
    def f(s):
        s += "x" + sglite.gen("a", stop=["dolor"], temperature=0.3, seed=7)

    state = f.run(max_new_tokens=16, temperature=0.0, top_p=0.9, stop_token_ids=[5])
    assert state["a"] == " lorem ipsum "
    sp = model.requests[-1]["sampling_params"]
    assert sp["temperature"] == 0.3 and sp["top_p"] == 0.9 and sp["max_new_tokens"] == 16
    assert sp["stop"] == ["dolor"] and sp["stop_token_ids"] == [5] and sp["seed"] == 7


def test_state_item_access_and_errors(backend):
    @sglite.function
    def f(s):
        s += "a"
        s["k"] = 3

    state = f.run()
    assert state["k"] == 3 and "k" in state and "zz" not in state
    with pytest.raises(KeyError):
        state["zz"]

    @sglite.function
    def g(s):
        s += None

    with pytest.raises(ValueError):
        g.run()


def test_worker_error_reraised_with_original_type(backend, model):
    model.fail_on = lambda payload: "context length exceeded (fake)"

    @sglite.function
    def f(s):
        s += "hello" + sglite.gen("x") + sglite.gen("y")

    state = f.run()
    with pytest.raises(RuntimeError, match="context length exceeded"):
        state["x"]
    with pytest.raises(RuntimeError, match="context length exceeded"):
        state["y"]
    assert isinstance(state.error(), RuntimeError)
    assert state.text() == "hello"  # text() still returns what was produced


def test_user_function_error_propagates(backend):
    @sglite.function
    def f(s):
        s += "a"
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError):
        f.run()


def test_var_scope(backend):
    @sglite.function
    def f(s):
        s += "pre "
        with s.var_scope("js"):
            s += '{"n": ' + sglite.gen("n", max_tokens=3, dtype=int) + "}"

    state = f.run()
    assert state["n"] == "42"
    assert json.loads(state["js"]) == {"n": 42}
    assert state.text() == 'pre {"n": 42}'


def test_constraints_travel_in_sampling_params(backend, model):
    class Person:  # duck-typed pydantic model
        @staticmethod
        def model_json_schema():
            return {"type": "object", "properties": {"name": {"type": "string"}}}

    @sglite.function
    def f(s):
        s += "a" + sglite.gen("r", regex=r"\d+", max_tokens=2)
        s += "b" + sglite.gen("j", json_schema=Person)
        s += "c" + sglite.gen("d", json_schema={"type": "integer"})
        s += "e" + sglite.gen("i", dtype="int", regex="ignored")

    state = f.run()
    state.sync()
    sps = [r["sampling_params"] for r in model.requests]
    assert sps[0]["regex"] == r"\d+" and sps[0]["json_schema"] is None
    assert json.loads(sps[1]["json_schema"])["properties"]["name"] == {"type": "string"}
    assert json.loads(sps[2]["json_schema"]) == {"type": "integer"}
    assert sps[3]["regex"] == sglite.protocol.sampling.REGEX_INT and sps[3]["stop"] == []
    assert json.loads(state["j"]) == {"name": "sglite"}
    with pytest.raises(Exception):
        sglite.gen("bad", regex="(")


def test_gen_n_returns_list_and_text_continues_with_first(backend):
    @sglite.function
    def f(s):
        s += "Q:" + sglite.gen("a", n=3, max_tokens=2) + " END"

    state = f.run()
    assert state["a"] == [" lorem ipsum", " sample1 lorem", " sample2 lorem"]
    assert state.text() == "Q: lorem ipsum END"
    assert len(state.get_meta_info("a")) == 3


def test_fork_join_gathers_lists(backend, model):
    @sglite.function
    def f(s):
        s += "Tips:"
        forks = s.fork(3)
        forks += lambda i: f" tip{i}:" + sglite.gen("tip", max_tokens=1)
        forks.join()
        s += " summary" + sglite.gen("summary", max_tokens=1)
        return forks

    state = f.run()
    assert state["tip"] == [" lorem"] * 3
    assert state.text() == "Tips: summary lorem"
    forks = state.ret_value
    assert forks[2].text() == "Tips: tip2: lorem"
    commits = [r for r in model.requests if r["sampling_params"] == {"max_new_tokens": 0}]
    assert [c["text"] for c in commits] == ["Tips:"]  # prefix committed once
    tip_prompts = sorted(r["text"] for r in _gen_requests(model) if "tip" in r["text"])
    assert tip_prompts == ["Tips: tip0:", "Tips: tip1:", "Tips: tip2:"]


def test_fork_before_any_text_skips_empty_commit(backend, model):
    model.fail_on = lambda p: "empty prompt" if p.get("text") == "" else None

    @sglite.function
    def f(s):
        forks = s.fork(2)
        forks += ["A" + sglite.gen("x", max_tokens=1), "B" + sglite.gen("x", max_tokens=1)]
        forks.join("concate_and_append")

    state = f.run()
    assert state.text() == "A loremB lorem"
    assert state.error() is None
    assert all(r.get("text") != "" for r in model.requests)


def test_join_reraises_branch_error(backend, model):
    model.fail_on = lambda p: "branch broke" if "B" in str(p.get("text")) else None

    @sglite.function
    def f(s):
        s += "x"
        forks = s.fork(2)
        forks += ["A" + sglite.gen("y", max_tokens=1), "B" + sglite.gen("y", max_tokens=1)]
        forks.join()

    with pytest.raises(RuntimeError, match="branch broke"):
        f.run()


def test_copy_is_independent(backend):
    @sglite.function
    def f(s):
        s += "base"
        with s.copy() as c:
            c += " copy" + sglite.gen("z", max_tokens=1)
            assert c["z"] == " lorem"
        s += " end"

    assert f.run().text() == "base end"


def test_bind_and_positional_args(backend):
    @sglite.function
    def f(s, a, b):
        s += a + b

    g = f.bind(a="x")
    assert g.run("y").text() == "xy"
    assert f.run("p", b="q").text() == "pq"
    with pytest.raises(TypeError):
        f.run("1", "2", "3")


def test_image_on_text_only_model_fails_at_once(backend):
    @sglite.function
    def f(s):
        s += sglite.user(sglite.image(b"\x89PNG") + "what is this?")

    with pytest.raises(ValueError, match="does not accept images"):
        f.run()


def test_image_on_vision_model_sends_image_data():
    model = FakeModel(image_support=True)

    @sglite.function
    def f(s):
        s += sglite.user(sglite.image(b"abc") + "what?")
        s += sglite.gen("a", max_tokens=1)

    state = f.run(backend=FakeBackend(model))
    state.sync()
    assert model.requests[-1]["image_data"] == "YWJj"
    assert "<image>" in model.requests[-1]["text"]
    content = state.messages()[0]["content"]
    assert content[0] == {"type": "text", "text": "<image>what?"}
    assert content[1]["image_url"]["url"] == "data:image/png;base64,YWJj"


def test_use_thread_false_runs_inline(backend):
    @sglite.function
    def f(s):
        s += "a" + sglite.gen("x", max_tokens=1)

    assert f.run(use_thread=False).text() == "a lorem"
    assert CANNED.startswith(" lorem")


def test_same_name_twice_waits_for_the_latest(model):
    calls = []

    def responder(prompt, sp, index):
        calls.append(prompt)
        return f" v{len(calls)}"

    model.responder = responder
    backend = FakeBackend(model)

    @sglite.function
    def f(s):
        s += "a" + sglite.gen("x", max_tokens=1)
        first = s["x"]
        s += "b" + sglite.gen("x", max_tokens=1) + "c" + sglite.gen("x", max_tokens=1)
        return first

    state = f.run(backend=backend)
    assert state.ret_value == " v1"
    assert state["x"] == " v3"
    assert state.text() == "a v1b v2c v3"
