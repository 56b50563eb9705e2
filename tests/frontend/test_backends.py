"""RuntimeEndpoint against a loopback fake server; EngineBackend against a fake Engine."""
from __future__ import annotations

import pytest

import sglite
from fake_runtime import FakeEngine, FakeHTTPServer, FakeModel
from sglite.backend import EngineBackend, RuntimeEndpoint, as_backend
from test_roles import CHATML, mt_bench
from test_select import CHOICES, table_logprob


@pytest.fixture
def server():
    srv = FakeHTTPServer(FakeModel(chat_template=CHATML))
    yield srv
    srv.close()


@sglite.function
def program(s):
    s += "Q: hi\nA:" + sglite.gen("a", max_tokens=3, stop="\n", temperature=0, return_logprob=True)


def test_exact_generate_body(server):
    ep = RuntimeEndpoint(server.url, api_key="sk-test")
    state = program.run(backend=ep, top_k=5)
    assert state["a"] == " lorem ipsum dolor"
    body = dict(server.model.requests[-1])
    # A fresh rid per call, so that Ctrl-C can abort exactly this request on the server.
    assert isinstance(body.pop("rid"), str)
    assert body == {
        "text": "Q: hi\nA:",
        "sampling_params": {
            "skip_special_tokens": True, "spaces_between_special_tokens": True, "max_new_tokens": 3,
            "n": 1, "stop": ["\n"], "stop_token_ids": [], "temperature": 0, "top_p": 1.0, "top_k": 5,
            "min_p": 0.0, "frequency_penalty": 0.0, "presence_penalty": 0.0, "ignore_eos": False,
            "regex": None, "json_schema": None,
        },
        "return_logprob": True,
        "stream": False,
    }
    assert all(h.get("Authorization") == "Bearer sk-test" for h in server.headers)
    assert state.get_meta_info("a")["output_token_logprobs_length"] == 3


def test_http_400_body_becomes_value_error(server):
    # One error model: a 400 is the caller's mistake, a ValueError as on sglite.Engine.
    server.model.fail_on = lambda p: "Input length 9999 exceeds the context length"
    ep = RuntimeEndpoint(server.url)
    state = program.run(backend=ep)
    with pytest.raises(ValueError, match="^Input length 9999 exceeds the context length$"):
        state["a"]


def test_sse_streaming_slices_cumulative_text(server):
    ep = RuntimeEndpoint(server.url)
    state = program.run(backend=ep, stream=True)
    chunks = list(state._iter_chunks("a"))
    assert [c for c, _ in chunks] == [" lorem", " ipsum", " dolor"]
    assert [len(m["output_token_logprobs"]) for _, m in chunks] == [1, 1, 1]
    assert server.model.requests[-1]["stream"] is True
    assert state.text() == "Q: hi\nA: lorem ipsum dolor"


def test_chat_template_and_select_over_http(server):
    ep = RuntimeEndpoint(server.url)
    state = mt_bench.run("x", "y", backend=ep)
    assert len(state.messages()) == 5
    assert state.text().startswith("<|im_start|>system\n")
    server.model.logprob_fn = table_logprob

    @sglite.function
    def pick(s):
        s += "Q: pick" + sglite.select("c", choices=CHOICES)

    assert pick.run(backend=ep)["c"] == " green sky today"


def test_server_calls_and_fallback(server):
    ep = RuntimeEndpoint(server.url)
    assert ep.get_model_info()["chat_template"] == CHATML
    assert ep.get_server_info()["path"] == "/server_info"
    assert ep.flush_cache() is True and server.model.flushes == 1
    sglite.set_default_backend(ep)
    try:
        assert sglite.flush_cache() is True
        assert sglite.get_server_info()["version"] == "fake"
    finally:
        sglite.set_default_backend(None)
    legacy = FakeHTTPServer(legacy_server_info=True)
    try:
        assert RuntimeEndpoint(legacy.url).get_server_info()["path"] == "/get_server_info"
    finally:
        legacy.close()


def test_engine_backend_normalizes_delta_stream():
    engine = FakeEngine(FakeModel(chat_template=CHATML))
    sglite.set_default_backend(engine)  # wrapped automatically
    try:
        assert isinstance(sglite.global_config.default_backend, EngineBackend)
        state = program.run(stream=True)
        assert [c for c, _ in state._iter_chunks("a")] == [" lorem", " ipsum", " dolor"]
        assert state.text() == "Q: hi\nA: lorem ipsum dolor"
        assert engine.calls[-1]["stream"] is True
        assert len(mt_bench.run("a", "b").messages()) == 5
        assert sglite.flush_cache() is True and engine.model.flushes == 1
    finally:
        sglite.set_default_backend(None)


def test_engine_backend_select_uses_input_ids():
    engine = FakeEngine(FakeModel(logprob_fn=table_logprob))

    @sglite.function
    def pick(s):
        s += "Q: pick" + sglite.select("c", choices=CHOICES,
                                       choices_method=sglite.unconditional_likelihood_normalized)

    assert pick.run(backend=engine)["c"] == " blue"
    assert engine.calls[-1]["input_ids"] is not None


def test_as_backend_wraps_runtime_like_objects(server):
    class FakeRuntime:
        url = server.url

    assert isinstance(as_backend(FakeRuntime()), RuntimeEndpoint)
    ep = RuntimeEndpoint(server.url)

    class FakeRuntime2:
        endpoint = ep

    assert as_backend(FakeRuntime2()) is ep
    with pytest.raises(TypeError):
        as_backend(object())
