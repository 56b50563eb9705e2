"""run_batch ordering/progress bar and streaming iteration."""
from __future__ import annotations

import asyncio
import time

import pytest

import sglite
from fake_runtime import FakeBackend, FakeModel, default_responder


@sglite.function
def qa(s, question):
    s += "Q: " + question + "\nA:" + sglite.gen("answer", max_tokens=1)


def test_run_batch_keeps_input_order(capsys):
    # Later items answer faster, so completion order differs from input order.
    def slow_responder(prompt, sp, index):
        k = int(prompt.split("Q: q")[1].split("\n")[0])
        time.sleep(0.02 * (5 - k))
        return f" a{k}"

    backend = FakeBackend(FakeModel(responder=slow_responder))
    states = qa.run_batch([{"question": f"q{k}"} for k in range(5)], backend=backend,
                          num_threads=5, progress_bar=True)
    assert [s["answer"] for s in states] == [f" a{k}" for k in range(5)]
    assert "5/5" in capsys.readouterr().err  # tqdm bar went to stderr


def test_run_batch_positional_and_arity(backend):
    states = qa.run_batch([("x",), ("y",)], temperature=0)
    assert [s.text() for s in states] == ["Q: x\nA: lorem", "Q: y\nA: lorem"]
    with pytest.raises(Exception):
        qa.run_batch([("x", "extra")])
    assert qa.run_batch([]) == []


@sglite.function
def story(s):
    s += "Once:"
    s += sglite.gen("answer", max_tokens=6, return_logprob=True)
    s += " The end."


def test_stream_text_iter_whole_and_var(backend, model):
    model.stream_delay = 0.01
    state = story.run(stream=True)
    pieces = list(state.text_iter())
    assert "".join(pieces) == "Once: lorem ipsum dolor sit amet consectetur The end."
    assert len(pieces) > 3  # really incremental
    state2 = story.run(stream=True)
    var_pieces = list(state2.text_iter("answer"))
    assert var_pieces == [" lorem", " ipsum", " dolor", " sit", " amet", " consectetur"]


def test_stream_meta_logprobs_are_incremental(backend):
    state = story.run(stream=True)

    async def collect():
        return [x async for x in state.text_async_iter("answer", return_meta_data=True)]

    chunks = asyncio.run(collect())
    counted = 0
    for text, meta in chunks:
        counted += len(meta["output_token_logprobs"])
        assert counted == meta["completion_tokens"]
    assert counted == 6
    assert len(state.get_meta_info("answer")["output_token_logprobs"]) == 6


def test_stream_cumulative_logprobs_are_normalized():
    class CumulativeModel(FakeModel):
        def stream(self, payload):
            acc = []
            for chunk in super().stream(payload):
                acc += chunk["meta_info"]["output_token_logprobs"]
                chunk["meta_info"]["output_token_logprobs"] = list(acc)
                yield chunk

    state = story.run(stream=True, backend=FakeBackend(CumulativeModel()))
    chunks = list(state._iter_chunks("answer"))
    assert [len(m["output_token_logprobs"]) for _, m in chunks] == [1] * 6


def test_stream_without_streaming_yields_once(backend):
    state = story.run()
    assert list(state.text_iter("answer")) == [" lorem ipsum dolor sit amet consectetur"]


def test_stream_error_in_user_function_is_raised_at_read(backend):
    @sglite.function
    def broken(s):
        s += "x" + sglite.gen("a", max_tokens=1)
        raise KeyError("user bug")

    state = broken.run(stream=True)
    assert "".join(state.text_iter()) == "x lorem"  # terminates
    assert state["a"] == " lorem"
    assert isinstance(state.error(), KeyError)


def test_default_responder_is_deterministic():
    assert default_responder("p", {}, 0) == default_responder("q", {}, 0)
