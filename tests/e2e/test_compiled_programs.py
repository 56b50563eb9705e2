"""Compiled programs on a real Engine: the same variables as the interpreter, greedy and seeded;
dynamic programs fall back with a reason; aborted graphs leave nothing in the KV pool.

Uses the shipped model when its weights exist, else a random tiny Llama (tests/conftest.py).
One Engine is shared by the whole module.
"""
from __future__ import annotations

import logging
import os
import time

import pytest

import sglite

SHIPPED = os.path.join(os.path.dirname(__file__), "..", "..", "sglite_runtime", "assets", "sglite-tiny")


@pytest.fixture(scope="module")
def engine(request):
    if os.path.exists(os.path.join(SHIPPED, "model.safetensors")):
        path = request.getfixturevalue("shipped_model_path")
    else:
        path = request.getfixturevalue("tiny_llama_path")
    eng = sglite.Engine(model_path=path, max_total_tokens=8192)
    yield eng
    eng.shutdown()


@pytest.fixture(scope="module")
def backend(engine):
    return sglite.backend.as_backend(engine)


@sglite.function
def few_shot(s, question):
    s += "The following are questions with answers.\nQ: What is the capital of France?\nA: Paris\n"
    s += "Q: " + question + "\nA:" + sglite.gen("answer", stop="\n", max_tokens=12)


@sglite.function
def mt_bench(s, q1, q2):
    s += sglite.system("You are a helpful assistant.")
    s += sglite.user(q1)
    s += sglite.assistant(sglite.gen("a1", max_tokens=12))
    with s.user():
        s += q2
    with s.assistant():
        s += sglite.gen("a2", max_tokens=12)


@sglite.function
def choose(s):
    s += "Is the sky blue? Answer:" + sglite.select("v", choices=[" True", " False", " Unknown"])
    s += "\nWhy?" + sglite.gen("why", max_tokens=6)


@sglite.function
def parallel(s, k):
    s += "Here are some tips for staying healthy.\n"
    forks = s.fork(k)
    forks += lambda i: f"Tip {i + 1}:" + sglite.gen("tip", max_tokens=10, stop="\n")
    forks.join()
    for i, tip in enumerate(s["tip"]):
        s += f"\n{i + 1}." + tip
    s += "\nIn summary," + sglite.gen("summary", max_tokens=10)


@sglite.function
def json_like(s, name):
    s += "Extract the record of " + name + ".\n"
    with s.var_scope("record"):
        s += '{"name": "' + sglite.gen("name", max_tokens=8, stop='"') + '", "age": '
        s += sglite.gen("age", max_tokens=4, stop=[",", "}"]) + "}"
    s += "\nAgain: " + s["name"]


@sglite.function
def samples(s):
    s += "A short word:" + sglite.gen("w", n=3, max_tokens=4)


PROGRAMS = [(few_shot, {"question": "What is the capital of Japan?"}), (mt_bench, {"q1": "Hi!", "q2": "Bye!"}),
            (choose, {}), (parallel, {"k": 3}), (json_like, {"name": "Ada"}), (samples, {})]
IDS = [f.__name__ for f, _ in PROGRAMS]


def _pool_clean(engine, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = engine.get_server_info()["internal_states"][0]
        pool = state["kv_pool"]
        ok = pool["available"] + pool["evictable"] == pool["total"] and pool["protected"] == 0
        if ok or time.monotonic() > deadline:
            assert ok, pool
            return pool
        time.sleep(0.2)


def _compare(func, kwargs, backend, **sampling):
    ref = func.run(backend=backend, **sampling, **kwargs)
    ref_text = ref.text()
    got = func.run(backend=backend, compile=True, **sampling, **kwargs)
    names = list(func.compile(**kwargs).graph.root_sources)
    assert names
    for name in names:
        assert got[name] == ref[name], name
    assert got.text() == ref_text
    assert got.messages() == ref.messages()


@pytest.mark.parametrize("func, kwargs", PROGRAMS, ids=IDS)
def test_greedy_compiled_equals_interpreted(backend, func, kwargs):
    _compare(func, kwargs, backend, temperature=0)


@pytest.mark.parametrize("func, kwargs", [PROGRAMS[0], PROGRAMS[3], PROGRAMS[5]], ids=[IDS[0], IDS[3], IDS[5]])
def test_seeded_sampling_compiled_equals_interpreted(backend, func, kwargs):
    _compare(func, kwargs, backend, temperature=0.9, seed=1234)


def test_run_batch_compiled_equals_interpreted(backend):
    batch = [{"question": q} for q in ("Japan?", "UK?", "China?", "Peru?")]
    ref = few_shot.run_batch(batch, backend=backend, temperature=0)
    got = few_shot.run_batch(batch, backend=backend, temperature=0, compile=True)
    assert [s["answer"] for s in got] == [s["answer"] for s in ref]
    assert [s.text() for s in got] == [s.text() for s in ref]


def test_dynamic_program_falls_back(backend, caplog):
    @sglite.function
    def react(s):
        s += "Action:" + sglite.select("act", choices=[" Search", " Finish"])
        if s["act"] == " Finish":
            s += " done"
        else:
            s += " search" + sglite.gen("q", max_tokens=4)

    with caplog.at_level(logging.INFO, logger="sglite.lang.compiler"):
        state = react.run(backend=backend, compile="auto")
    assert state["act"] in (" Search", " Finish")
    assert "comparison" in caplog.text and "s[\"act\"] == \" Finish\"" in caplog.text


@sglite.function
def chat_answer(s, question):
    s += sglite.user(question)
    s += sglite.assistant(sglite.gen("answer", max_tokens=64, ignore_eos=True))


def test_streaming_compiled_text_iter(backend):
    # ignore_eos: the answer is never empty, so the stream has several pieces to check.
    state = chat_answer.run("Capital of Peru?", backend=backend, temperature=0, stream=True, compile=True)
    pieces = list(state.text_iter())
    assert "".join(pieces) == state.text() and len(pieces) >= 2
    ref = chat_answer.run("Capital of Peru?", backend=backend, temperature=0)
    assert state["answer"] == ref["answer"]


def test_aborted_graph_leaves_no_kv(engine):
    @sglite.function
    def long_forks(s):
        s += "Write a long story about a dragon and a knight who travel far.\n"
        forks = s.fork(4)
        forks += lambda i: f"Chapter {i + 1}:" + sglite.gen("ch", max_tokens=300, ignore_eos=True)
        forks.join()
        s += "The end." + sglite.gen("end", max_tokens=50, ignore_eos=True)

    graph = long_forks.compile().graph.to_dict()
    events = engine.run_program(graph, {"temperature": 0.0, "max_new_tokens": 300}, stream=True)
    seen = 0
    for ev in events:
        if ev["type"] == "text" and ev.get("var") == "ch":
            seen += 1
            if seen >= 8:
                break
    events.close()  # cancels the program: its running requests are aborted
    assert seen >= 8
    _pool_clean(engine)
    # The engine still serves programs afterwards.
    assert isinstance(few_shot.run("Again?", backend=sglite.backend.as_backend(engine), temperature=0,
                                   compile=True)["answer"], str)
    _pool_clean(engine)


def test_malformed_graph_is_rejected(engine):
    with pytest.raises(ValueError, match="version"):
        engine.run_program({"version": 99, "streams": []})
