"""The offline Engine end to end: the same processes as the server, driven in-process."""

from __future__ import annotations

import asyncio

import pytest

import sglite

GREEDY = {"max_new_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def engine(tiny_llama_path):
    with sglite.Engine(model_path=tiny_llama_path, max_total_tokens=4096) as e:
        yield e


def _pool_clean(engine) -> dict:
    state = engine.get_server_info()["internal_states"][0]
    pool = state["kv_pool"]
    assert pool["available"] + pool["evictable"] == pool["total"] and pool["protected"] == 0, pool
    return state


def test_generate_single_and_batch(engine):
    one = engine.generate("Hello there", GREEDY)
    assert set(one) >= {"text", "output_ids", "meta_info"}
    meta = one["meta_info"]
    assert meta["finish_reason"]["type"] in ("length", "stop")
    assert meta["completion_tokens"] == len(one["output_ids"]) <= 8
    assert meta["prompt_tokens"] == len(engine.tokenizer.encode("Hello there"))
    many = engine.generate(["Hello there", "Another prompt"], GREEDY)
    assert isinstance(many, list) and len(many) == 2
    assert many[0]["output_ids"] == one["output_ids"]
    ids = engine.tokenizer.encode("Hello there")
    by_ids = engine.generate(input_ids=ids, sampling_params=GREEDY)
    assert by_ids["output_ids"] == one["output_ids"]


def test_stream_chunks_add_up(engine):
    # Enough tokens that the stream has several chunks: outputs that arrive together between
    # two reads of the stream are merged into one chunk, which is allowed.
    sp = {"max_new_tokens": 96, "temperature": 0, "ignore_eos": True}
    full = engine.generate("Streaming test", sp)
    chunks = list(engine.generate("Streaming test", sp, stream=True))
    assert len(chunks) >= 2
    assert "".join(c["text"] for c in chunks) == full["text"]
    assert sum((c["output_ids"] for c in chunks), []) == full["output_ids"]
    assert chunks[-1]["meta_info"]["finish_reason"] is not None


def test_async_generate(engine):
    async def main():
        out = await engine.async_generate("Hello there", GREEDY)
        pieces = [c["text"] async for c in await engine.async_generate("Hello there", GREEDY, stream=True)]
        return out, pieces

    out, pieces = asyncio.run(main())
    assert "".join(pieces) == out["text"]


def test_stop_string_is_trimmed(engine):
    base = engine.generate("Stop test", {"max_new_tokens": 12, "temperature": 0, "ignore_eos": True})
    text = base["text"]
    assert len(text) > 4
    stop = text[2:4]
    out = engine.generate("Stop test", {"max_new_tokens": 12, "temperature": 0, "stop": stop})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["text"] == text[: text.find(stop)]
    kept = engine.generate("Stop test", {"max_new_tokens": 12, "temperature": 0, "stop": stop, "no_stop_trim": True})
    # The whole last token stays, so the stop string is in it (not necessarily at the end).
    assert stop in kept["text"] and kept["text"].startswith(out["text"] + stop)


def test_n_samples_share_prompt_kv(engine):
    prompt = "Shared prompt for several samples " * 3
    outs = engine.generate(prompt, {"max_new_tokens": 6, "temperature": 1.0, "n": 4, "seed": 3})
    assert len(outs) == 4
    plen = outs[0]["meta_info"]["prompt_tokens"]
    assert all(o["meta_info"]["cached_tokens"] >= plen - 1 for o in outs)
    assert len({tuple(o["output_ids"]) for o in outs}) > 1
    again = engine.generate(prompt, {"max_new_tokens": 6, "temperature": 1.0, "n": 4, "seed": 3})
    assert [o["output_ids"] for o in again] == [o["output_ids"] for o in outs]


def test_logprobs(engine):
    out = engine.generate("Logprob test", GREEDY, return_logprob=True, logprob_start_len=0, top_logprobs_num=3,
                          return_text_in_logprobs=True)
    meta = out["meta_info"]
    assert len(meta["output_token_logprobs"]) == meta["completion_tokens"]
    assert [t for _, t, _ in meta["output_token_logprobs"]] == out["output_ids"]
    assert meta["input_token_logprobs"][0][0] is None
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"]
    for (lp, tid, _), top in zip(meta["output_token_logprobs"], meta["output_top_logprobs"]):
        assert len(top) == 3 and top[0][1] == tid and abs(top[0][0] - lp) < 1e-5  # greedy = top-1


def test_bad_input_raises_value_error(engine):
    for sp in ({"temperature": -1}, {"top_p": 0}, {"top_k": 0}, {"max_new_tokens": 100000}, {"bogus": 1}):
        with pytest.raises(ValueError):
            engine.generate("x", sp)
    with pytest.raises(ValueError, match="empty"):
        engine.generate("", GREEDY)
    with pytest.raises(ValueError, match="context length"):
        engine.generate(input_ids=[5] * 2000, sampling_params={"max_new_tokens": 1})
    _pool_clean(engine)


def test_abort_and_flush_leave_pool_clean(engine):
    async def main():
        agen = await engine.async_generate("Abort me", {"max_new_tokens": 200, "ignore_eos": True}, stream=True)
        async for _ in agen:
            break
        await agen.aclose()

    asyncio.run(main())
    import time

    for _ in range(50):  # the abort reaches the scheduler within a step or two
        state = engine.get_server_info()["internal_states"][0]
        if state["num_running_reqs"] == 0:
            break
        time.sleep(0.1)
    _pool_clean(engine)
    assert engine.flush_cache() is True
    assert _pool_clean(engine)["kv_pool"]["evictable"] == 0


def test_model_info_has_chat_template(engine):
    info = engine.get_model_info()
    assert info["chat_template"] and "<|assistant|>" in info["chat_template"]
