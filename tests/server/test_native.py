"""Native SGLang routes: /generate (plain, batch, logprobs, streaming), info, cache, health, metrics."""

from __future__ import annotations

import json

import httpx
import pytest



GREEDY = {"max_new_tokens": 6, "temperature": 0}


def sse_events(resp: httpx.Response) -> list:
    events = []
    for line in resp.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_generate_single(server, wait_clean):
    r = httpx.post(server.url + "/generate", json={"text": "The list", "sampling_params": GREEDY}, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    m = out["meta_info"]
    assert isinstance(out["text"], str) and m["completion_tokens"] <= 6 and m["prompt_tokens"] > 0
    assert m["finish_reason"]["type"] in ("length", "stop")
    again = httpx.post(server.url + "/generate", json={"text": "The list", "sampling_params": GREEDY}, timeout=60)
    assert again.json()["text"] == out["text"]  # greedy is deterministic
    assert again.json()["meta_info"]["cached_tokens"] > 0 or m["prompt_tokens"] == 1


def test_generate_batch_and_input_ids(server, wait_clean):
    body = {"text": ["a b", "c d e"], "sampling_params": [GREEDY, {"max_new_tokens": 2}], "rid": ["b1", "b2"]}
    outs = httpx.post(server.url + "/generate", json=body, timeout=60).json()
    assert [o["meta_info"]["id"] for o in outs] == ["b1", "b2"]
    assert outs[1]["meta_info"]["completion_tokens"] <= 2
    ids = httpx.post(server.url + "/tokenize", json={"prompt": "c d e", "add_special_tokens": False}).json()["tokens"]
    r = httpx.post(server.url + "/generate", json={"input_ids": ids, "sampling_params": GREEDY}, timeout=60).json()
    assert r["meta_info"]["prompt_tokens"] == len(ids)


def test_generate_logprobs(server, wait_clean):
    body = {"text": "one two three", "sampling_params": {"max_new_tokens": 3, "temperature": 0},
            "return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 2, "return_text_in_logprobs": True}
    m = httpx.post(server.url + "/generate", json=body, timeout=60).json()["meta_info"]
    assert len(m["output_token_logprobs"]) == m["completion_tokens"] == m["output_token_logprobs_length"]
    assert m["input_token_logprobs"][0][0] is None and len(m["input_token_logprobs"]) == m["prompt_tokens"]
    assert all(len(t) == 2 for t in m["output_top_logprobs"])
    assert all(isinstance(t[2], str) for t in m["output_token_logprobs"])


def test_generate_stream(server, wait_clean):
    body = {"text": "Once", "sampling_params": {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True},
            "stream": True, "return_logprob": True}
    with httpx.stream("POST", server.url + "/generate", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    texts = [c["text"] for c in chunks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # cumulative text
    total = sum(len(c["meta_info"]["output_token_logprobs"]) for c in chunks)
    assert total == chunks[-1]["meta_info"]["completion_tokens"] == 5  # incremental logprobs
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] == "length"


def test_stream_input_error_is_400_before_stream(server, wait_clean):
    r = httpx.post(server.url + "/generate", json={"text": "", "stream": True}, timeout=30)
    assert r.status_code == 400 and "error" in r.json()


def test_model_and_server_info(server, wait_clean):
    info = httpx.get(server.url + "/get_model_info").json()
    assert info["model_path"] and info["is_generation"] is True
    for path in ("/server_info", "/get_server_info"):
        s = httpx.get(server.url + path).json()
        assert s["version"] and s["api_key"] is None
        pool = s["internal_states"][0]["kv_pool"]
        assert {"total", "available", "evictable", "protected"} <= set(pool)


def test_flush_cache_get_and_post(server, wait_clean):
    wait_clean(server.url)
    assert httpx.post(server.url + "/flush_cache").status_code == 200
    r = httpx.get(server.url + "/flush_cache")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    s = wait_clean(server.url)
    assert s["kv_pool"]["evictable"] == 0


def test_flush_cache_400_while_running(server, wait_clean):
    body = {"text": "x", "sampling_params": {"max_new_tokens": 500, "ignore_eos": True}, "stream": True, "rid": "fc-run"}
    with httpx.stream("POST", server.url + "/generate", json=body, timeout=60) as r:
        it = r.iter_lines()
        next(l for l in it if l.startswith("data: "))
        assert httpx.post(server.url + "/flush_cache").status_code == 400
        httpx.post(server.url + "/abort_request", json={"rid": "fc-run"})
        events = [l for l in it if l.startswith("data: ")]
    last = json.loads(events[-2][6:])
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    wait_clean(server.url)


def test_abort_all(server, wait_clean):
    import concurrent.futures as cf

    body = {"text": "y", "sampling_params": {"max_new_tokens": 500, "ignore_eos": True}}
    with cf.ThreadPoolExecutor(4) as ex:
        futs = [ex.submit(httpx.post, server.url + "/generate", json=body, timeout=120) for _ in range(4)]
        import time

        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/get_load").json()[0]["num_running_reqs"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.post(server.url + "/abort_request", json={"abort_all": True}).status_code == 200
        results = [f.result().json() for f in futs]
    assert all(r["meta_info"]["finish_reason"]["type"] == "abort" for r in results), results
    wait_clean(server.url)


def test_health_load_metrics(server, wait_clean):
    assert httpx.get(server.url + "/health").status_code == 200
    assert httpx.get(server.url + "/health_generate", timeout=30).status_code == 200
    load = httpx.get(server.url + "/get_load").json()
    assert load[0]["num_reqs"] >= 0
    text = httpx.get(server.url + "/metrics").text
    for name in ("sglite:prompt_tokens_total", "sglite:generation_tokens_total", "sglite:num_requests_total",
                 "sglite:num_running_reqs", "sglite:token_usage", "sglite:cache_hit_rate",
                 "sglite:time_to_first_token_seconds_bucket", "sglite:e2e_request_latency_seconds_count",
                 "sglite:inter_token_latency_seconds_bucket", "sglite:num_aborted_requests_total"):
        assert name in text
    assert 'model_name="' in text


@pytest.mark.parametrize("prefix", ["", "/v1"])
def test_tokenize_detokenize(server, prefix, wait_clean):
    toks = httpx.post(server.url + prefix + "/tokenize", json={"prompt": "hello world"}).json()
    assert toks["count"] == len(toks["tokens"]) > 0
    text = httpx.post(server.url + prefix + "/detokenize", json={"tokens": toks["tokens"]}).json()["prompt"]
    assert "hello" in text
    chat = httpx.post(server.url + prefix + "/tokenize", json={"messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code in (200, 400)
