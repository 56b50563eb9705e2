"""sglite.OpenAI runs programs against an OpenAI-compatible server: sglite's own /v1 through
the real ``openai`` SDK (completion and chat models, select by prompt logprobs, constraints
as structured-output fields, forks as concurrent requests, streaming, clear refusals)."""
from __future__ import annotations

import json
import os
import re

import pytest

import sglite as sgl

ASSETS = os.path.join(os.path.dirname(__file__), "..", "..", "sglite_runtime", "assets", "sglite-tiny")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(os.path.join(ASSETS, "model.safetensors")),
                       reason="shipped model weights are not built"),
]


def _model(url: str) -> str:
    from openai import OpenAI as Client

    return Client(base_url=url + "/v1", api_key="none").models.list().data[0].id


@pytest.fixture(scope="module")
def completion(http_backend):
    return sgl.OpenAI(_model(http_backend.base_url), base_url=http_backend.base_url + "/v1",
                      api_key="none", is_chat_model=False)


@pytest.fixture(scope="module")
def chat(http_backend):
    return sgl.OpenAI(_model(http_backend.base_url), base_url=http_backend.base_url + "/v1", api_key="none")


@sgl.function
def quiz(s, question):
    s += "Q: Is the sky blue?\nA: yes\nQ: " + question + "\nA:"
    s += sgl.select("verdict", choices=[" yes", " no", " maybe"])
    s += "\nBecause" + sgl.gen("why", max_tokens=8, stop="\n", temperature=0)
    s += "\nCount: " + sgl.gen("count", dtype=int, max_tokens=8)
    s += "\nCode: " + sgl.gen("code", regex=r"[A-Z]{3}-[0-9]{2}", max_tokens=10)
    s += "\nJSON: " + sgl.gen("obj", json_schema={"type": "object", "properties": {"n": {"type": "integer"}},
                                                 "required": ["n"]}, max_tokens=24)
    forks = s.fork(3)
    for i in range(3):
        forks[i] += f"\nIdea {i}:" + sgl.gen("idea", max_tokens=4, temperature=0.8)
    forks.join()
    s += "\nSamples:" + sgl.gen("samples", n=2, max_tokens=3)


def test_completion_model_runs_a_full_program(completion):
    state = quiz.run("Is grass green?", backend=completion)
    assert state["verdict"] in (" yes", " no", " maybe")
    meta = state.get_meta_info("verdict")
    assert len(meta["normalized_prompt_logprobs"]) == 3
    assert meta["input_token_logprobs"][0] and all(t[0] is not None for t in meta["input_token_logprobs"][0])
    assert "\n" not in state["why"] and len(state["why"]) > 0
    assert re.fullmatch(sgl.lang.ir.REGEX_INT, state["count"])
    assert re.fullmatch(r"[A-Z]{3}-[0-9]{2}", state["code"])
    assert isinstance(json.loads(state["obj"])["n"], int)
    assert isinstance(state["idea"], list) and len(state["idea"]) == 3
    assert isinstance(state["samples"], list) and len(state["samples"]) == 2
    assert state.text().startswith("Q: Is the sky blue?")


def test_select_methods_and_streaming(completion):
    @sgl.function
    def pick(s):
        s += "Colour of grass:" + sgl.select("c", choices=[" green", " purple"],
                                             choices_method=sgl.greedy_token_selection)
        s += sgl.select("u", choices=[" yes", " no"], choices_method=sgl.unconditional_likelihood_normalized)
        s += sgl.gen("more", max_tokens=6)

    state = pick.run(backend=completion, stream=True)
    chunks = list(state.text_iter("more"))
    assert all(chunks) and "".join(chunks) == state["more"]
    assert state["c"] in (" green", " purple") and state["u"] in (" yes", " no")


@sgl.function
def multi_turn(s, q1, q2):
    s += sgl.system("You are terse.")
    s += sgl.user(q1)
    s += sgl.assistant(sgl.gen("a1", max_tokens=6, temperature=0))
    s += sgl.user(q2)
    s += sgl.assistant(sgl.gen("a2", max_tokens=6, stop=".", n=1))


def test_chat_model_roles_and_refusals(chat):
    state = multi_turn.run("Hi?", "Bye?", backend=chat)
    roles = [m["role"] for m in state.messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant"]
    assert state.messages()[2]["content"] == state["a1"].strip() and "." not in state["a2"]

    @sgl.function
    def chat_select(s):
        s += sgl.user("Pick one.")
        s += sgl.assistant(sgl.select("x", choices=["a", "b"]))

    with pytest.raises(ValueError, match="select cannot be scored on the chat model"):
        chat_select.run(backend=chat)["x"]

    @sgl.function
    def loose_gen(s):
        s += "no roles here" + sgl.gen("x", max_tokens=2)

    with pytest.raises(ValueError, match="assistant message"):
        loose_gen.run(backend=chat)["x"]


def test_openai_structured_outputs_refuse_regex(http_backend):
    be = sgl.OpenAI(_model(http_backend.base_url), base_url=http_backend.base_url + "/v1", api_key="none",
                    is_chat_model=False, structured_outputs="openai")

    @sgl.function
    def f(s):
        s += "x" + sgl.gen("y", regex="[0-9]+")

    with pytest.raises(ValueError, match="not supported by the OpenAI API"):
        f.run(backend=be)["y"]
