"""SGLang programs run unchanged: fork-group item assignment, streamed chunks and meta,
separate_reasoning, run/run_batch keywords (stop_regex, generator_style), cache()."""
from __future__ import annotations

import asyncio

import pytest

import sglite as sgl
from fake_runtime import FakeBackend, FakeModel


@sgl.function
def skeleton_of_thought(s, topic):
    s += "Topic: " + topic + "\n"
    forks = s.fork(3)
    for i in range(len(forks)):
        forks[i] += f"Point {i + 1}:" + sgl.gen("point", max_tokens=3)  # SGLang's idiom
    for i, f in enumerate(forks):
        s += f"{i + 1}." + forks[i]["point"] + "\n"  # and forks[i]["var"]
    forks.join()


def test_fork_item_assignment_and_indexing(backend):
    state = skeleton_of_thought.run(topic="tea")
    assert state["point"] == [" lorem ipsum dolor"] * 3
    assert state.text().count("lorem ipsum dolor") == 3

    @sgl.function
    def misuse(s):
        forks = s.fork(2)
        with pytest.raises(TypeError, match="cannot be replaced"):
            forks[0] = forks[1]
        with pytest.raises(ValueError, match="position_ids_offset"):
            s.fork(2, position_ids_offset=[0, 1])
        return "checked"

    assert misuse.run().ret_value == "checked"


class _SilentTokens(FakeBackend):
    """A runtime whose every token is preceded by one that shows no text yet (a partial UTF-8
    byte, say): the chunk is empty but carries a logprob."""

    def generate_stream(self, state_text, sampling_params, image_data=None):
        for delta, meta in super().generate_stream(state_text, sampling_params, image_data):
            yield "", dict(meta, output_token_logprobs=[[-9.0, 0, None]])
            yield delta, meta


@sgl.function
def story(s):
    s += "Once:" + sgl.gen("answer", max_tokens=5, return_logprob=True)


def test_streamed_chunks_are_never_empty_and_keep_every_logprob():
    backend = _SilentTokens(FakeModel())
    state = story.run(stream=True, backend=backend)

    async def collect():
        return [item async for item in state.text_async_iter("answer", return_meta_data=True)]

    items = asyncio.run(collect())
    assert [c for c, _ in items] == [" lorem", " ipsum", " dolor", " sit", " amet"]
    for k, (_, meta) in enumerate(items, 1):
        assert [lp[0] for lp in meta["output_token_logprobs"]][0] == -9.0  # carried, not lost
        assert len(meta["output_token_logprobs"]) == 2
        assert meta["output_token_logprobs_length"] == k and meta["completion_tokens"] == k
    assert list(story.run(stream=True, backend=backend).text_iter("answer"))[0] == " lorem"


def test_separate_reasoning_splits_variable_and_text():
    def think(prompt, sp, index):
        return "<think>two plus two</think> four"

    backend = FakeBackend(FakeModel(responder=think))

    @sgl.function
    def f(s):
        s += "Q: 2+2?\nA:" + sgl.separate_reasoning(sgl.gen("answer", max_tokens=12), model_type="qwen3")
        s += "\nDone."

    state = f.run(backend=backend)
    assert state["answer"] == "four"
    assert state["answer_reasoning_content"] == "two plus two"
    assert state.text() == "Q: 2+2?\nA:four\nDone."
    with pytest.raises(ValueError, match="model_type"):
        sgl.separate_reasoning(sgl.gen("x"), model_type="nope")


def test_run_and_run_batch_keywords(backend, model):
    @sgl.function
    def f(s, q):
        s += q + sgl.gen("a", max_tokens=2)

    f.run("x", stop_regex=r"\d+").sync()
    assert model.requests[-1]["sampling_params"]["stop_regex"] == [r"\d+"]
    out = f.run_batch([{"q": f"q{i}"} for i in range(5)], generator_style=True, num_threads=2)
    assert not isinstance(out, list)
    assert [s.text() for s in out] == [f"q{i} lorem ipsum" for i in range(5)]


def test_cache_prefills_the_static_prefix(backend, model):
    @sgl.function
    def f(s):
        s += "A long shared instruction. " * 3
        s += sgl.gen("a", max_tokens=2)

    f.cache()
    assert model.requests[-1]["text"] == "A long shared instruction. " * 3
    assert model.requests[-1]["sampling_params"]["max_new_tokens"] == 0


def test_compile_auto_falls_back_with_a_warning_on_a_server_without_programs(caplog):
    """An SGLang server (no /run_program, no /program_info): "auto" interprets and says why."""
    from fake_runtime import FakeHTTPServer
    from sglite.lang.tracer import NotCompilable

    server = FakeHTTPServer(FakeModel())
    try:
        backend = sgl.RuntimeEndpoint(server.url)

        @sgl.function
        def f(s):
            s += "Q:" + sgl.gen("a", max_tokens=2)

        with caplog.at_level("WARNING", logger="sglite.lang.compiler"):
            state = f.run(backend=backend, compile="auto")
        assert state["a"] == " lorem ipsum"
        assert any("cannot run compiled programs" in r.getMessage() and "/program_info" in r.getMessage()
                   for r in caplog.records if r.levelname == "WARNING")
        with pytest.raises(NotCompilable, match="cannot run compiled programs"):
            f.run(backend=backend, compile=True)
        states = f.run_batch([{}, {}], backend=backend, compile="auto")
        assert [s["a"] for s in states] == [" lorem ipsum"] * 2
    finally:
        server.close()
