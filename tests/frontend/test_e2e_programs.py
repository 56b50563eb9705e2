"""Frontend-spec §6 "T" programs on the shipped model: in-process Engine and HTTP server.

Skipped unless the shipped weights exist and the runtime imports; these start
real runtime processes, so they are marked ``slow``.
"""
from __future__ import annotations

import asyncio
import json
import os
import re

import pytest

import sglite

ASSETS = os.path.join(os.path.dirname(__file__), "..", "..", "sglite_runtime", "assets", "sglite-tiny")
HAS_WEIGHTS = any(f.endswith(".safetensors") for f in os.listdir(ASSETS)) if os.path.isdir(ASSETS) else False

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not HAS_WEIGHTS, reason="shipped model weights are not built yet"),
]


@pytest.fixture(params=["engine", "http"])
def runtime_backend(request):
    # The session's shared Engine and server (tests/frontend/conftest.py): one start-up each.
    return request.getfixturevalue(f"{request.param}_backend")


@sglite.function
def few_shot_qa(s, question):
    s += "The following are questions with answers.\nQ: What is the capital of France?\nA: Paris\n"
    s += "Q: " + question + "\nA:" + sglite.gen("answer", stop="\n", temperature=0, max_tokens=16)


@sglite.function
def mt_bench(s, q1, q2):
    s += sglite.system("You are a helpful assistant.")
    s += sglite.user(q1)
    s += sglite.assistant(sglite.gen("a1", max_tokens=16))
    with s.user():
        s += q2
    with s.assistant():
        s += sglite.gen("a2", max_tokens=16)


@sglite.function
def check_select(s):
    s += "Is the sky blue? Answer:" + sglite.select("v", choices=[" True", " False", " Unknown"])


@sglite.function
def parallel(s):
    s += "Three tips:\n"
    forks = s.fork(3)
    forks += lambda i: f"{i + 1}." + sglite.gen("tip", max_tokens=8, stop="\n")
    forks.join()
    s += "Summary:" + sglite.gen("summary", max_tokens=8)


@sglite.function
def typed(s):
    s += "Number: " + sglite.gen_int("n", max_tokens=6)
    s += "\nIP: " + sglite.gen("ip", regex=r"((25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)",
                               max_tokens=20)


def test_few_shot_batch_order(runtime_backend):
    states = few_shot_qa.run_batch([{"question": q} for q in ["Japan?", "UK?", "China?"]],
                                   backend=runtime_backend)
    assert len(states) == 3
    for s, q in zip(states, ["Japan?", "UK?", "China?"]):
        assert "Q: " + q in s.text() and "\n" not in s["answer"]


def test_mt_bench_messages(runtime_backend):
    state = mt_bench.run("Hi", "Bye", backend=runtime_backend, temperature=0)
    assert len(state.messages()) in (4, 5)


def test_select_membership_and_meta(runtime_backend):
    state = check_select.run(backend=runtime_backend)
    assert state["v"] in (" True", " False", " Unknown")
    meta = state.get_meta_info("v")
    assert len(meta["normalized_prompt_logprobs"]) == 3
    assert all(len(toks) >= 1 for toks in meta["input_token_logprobs"])


def test_parallel_decoding(runtime_backend):
    state = parallel.run(backend=runtime_backend, temperature=0)
    assert isinstance(state["summary"], str) and len(state["tip"]) == 3


def test_constraints(runtime_backend):
    state = typed.run(backend=runtime_backend, temperature=0)
    int(state["n"])
    assert re.fullmatch(r"((25[0-5]|2[0-4]\d|[01]?\d\d?)\.){3}(25[0-5]|2[0-4]\d|[01]?\d\d?)", state["ip"])


def test_stream_logprobs(runtime_backend):
    @sglite.function
    def story(s):
        s += "Once upon a time" + sglite.gen("answer", max_tokens=12, return_logprob=True, ignore_eos=True)

    state = story.run(backend=runtime_backend, stream=True, temperature=0)

    async def collect():
        return [x async for x in state.text_async_iter("answer", return_meta_data=True)]

    counted = 0
    for _, meta in asyncio.run(collect()):
        counted += len(meta["output_token_logprobs"])
        assert counted == meta["completion_tokens"]
    assert counted == 12
    json.dumps(state.get_meta_info("answer"))
