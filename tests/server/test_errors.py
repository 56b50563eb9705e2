"""Client mistakes are 4xx with a useful message (never 422/500); disconnects free the KV pool."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

LONG = "@LONG@"  # replaced by a prompt longer than the served model's context


@pytest.fixture(scope="module")
def long_text(server):
    ctx = httpx.get(server.url + "/get_model_info").json()["max_context_length"]
    return "word " * (ctx + 16)


def _fill(obj, long_text):
    if obj == LONG:
        return long_text
    if isinstance(obj, dict):
        return {k: _fill(v, long_text) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, long_text) for v in obj]
    return obj


def _msg(r: httpx.Response) -> str:
    return r.json()["error"]["message"]


@pytest.mark.parametrize("path", ["/generate", "/v1/completions", "/v1/chat/completions"])
def test_invalid_json_and_non_object(server, path):
    h = {"content-type": "application/json"}
    for body in (b"{not json", b"[1, 2]", b'"str"', b"", b"null"):
        r = httpx.post(server.url + path, content=body, headers=h)
        assert r.status_code == 400, (body, r.text)
        assert _msg(r)
    r = httpx.post(server.url + path, content=b"text=hi", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400


@pytest.mark.parametrize("body, needle", [
    ({}, "text or input_ids"),
    ({"text": ""}, "empty"),
    ({"input_ids": []}, "empty"),
    ({"text": LONG}, "is longer than the model's context length"),
    ({"text": "hi", "sampling_params": {"max_new_tokens": 100000}}, "maximum context length"),
    ({"text": "hi", "sampling_params": {"temperature": -1}}, "temperature must be non-negative"),
    ({"text": "hi", "sampling_params": {"top_p": 0}}, "top_p must be in (0, 1]"),
    ({"text": "hi", "sampling_params": {"n": 100000}}, "n must be at most"),
    ({"text": "hi", "sampling_params": {"bogus": 1}}, "Unknown sampling parameter"),
    ({"input_ids": [10 ** 9]}, "out of vocabulary"),
    ({"text": ["a", "b"], "sampling_params": [{}]}, "list of 1"),
    ({"text": "hi", "top_logprobs_num": -3, "return_logprob": True}, "top_logprobs_num"),
])
def test_generate_bad_input(server, long_text, body, needle):
    r = httpx.post(server.url + "/generate", json=_fill(body, long_text), timeout=30)
    assert r.status_code == 400, r.text
    assert needle in _msg(r)


@pytest.mark.parametrize("path, body, needle", [
    ("/v1/completions", {"model": None, "prompt": ""}, "empty"),
    ("/v1/completions", {"prompt": LONG}, "is longer than the model's context length"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 100000}, "maximum context length"),
    ("/v1/completions", {"prompt": "hi", "temperature": -1}, "temperature"),
    ("/v1/completions", {"prompt": "hi", "top_p": 0}, "top_p"),
    ("/v1/completions", {"prompt": "hi", "n": 1000}, "n must be at most"),
    ("/v1/completions", {}, "prompt"),
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": LONG}]}, "context length"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "temperature": -1}, "temperature"),
])
def test_openai_bad_input(server, long_text, path, body, needle):
    r = httpx.post(server.url + path, json=_fill(body, long_text), timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert needle in err["message"] and err["code"] == 400 and err["type"] == "BadRequestError"


def test_stream_length_error_before_stream(server, long_text):
    r = httpx.post(server.url + "/v1/completions", json={"prompt": long_text, "stream": True}, timeout=30)
    assert r.status_code == 400 and "context length" in _msg(r)


def test_unknown_model_404(server):
    for path, body in (("/v1/completions", {"model": "nope", "prompt": "x"}),
                       ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]})):
        r = httpx.post(server.url + path, json=body)
        assert r.status_code == 404 and _msg(r) == "The model `nope` does not exist."


def test_unknown_route_404(server):
    assert httpx.get(server.url + "/nope").status_code == 404


def test_disconnect_mid_stream_frees_pool(server, wait_clean):
    wait_clean(server.url)
    body = {"text": "disconnect me", "stream": True, "sampling_params": {"max_new_tokens": 500, "ignore_eos": True}}
    with httpx.stream("POST", server.url + "/generate", json=body, timeout=60) as r:
        n = 0
        for line in r.iter_lines():
            n += line.startswith("data: ")
            if n >= 3:
                break  # leaving the block closes the connection mid-stream
    s = wait_clean(server.url, timeout=15)
    pool = s["kv_pool"]
    assert pool["available"] + pool["evictable"] == pool["total"] and pool["protected"] == 0
    assert s["num_running_reqs"] == 0


def test_disconnect_non_streaming_aborts(server, wait_clean):
    wait_clean(server.url)
    body = {"prompt": "slow", "max_tokens": 500, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json=body, timeout=0.5)
    s = wait_clean(server.url, timeout=15)
    assert s["num_running_reqs"] == 0 and s["kv_pool"]["protected"] == 0


def test_200_concurrent_mixed_requests(server, wait_clean):
    async def main() -> list[int]:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as c:
            async def one(i: int) -> int:
                kind = i % 4
                if kind == 0:
                    r = await c.post("/generate", json={"text": f"req {i}", "sampling_params": {"max_new_tokens": 4}})
                elif kind == 1:
                    r = await c.post("/v1/completions", json={"prompt": f"req {i}", "max_tokens": 4})
                elif kind == 2:
                    r = await c.post("/v1/chat/completions", json={
                        "messages": [{"role": "user", "content": f"req {i}"}], "max_tokens": 4})
                else:
                    async with c.stream("POST", "/generate", json={"text": f"s {i}", "stream": True,
                                                                   "sampling_params": {"max_new_tokens": 4}}) as r:
                        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
                        assert lines[-1] == "data: [DONE]"
                return r.status_code
            return await asyncio.gather(*(one(i) for i in range(200)))

    t = time.monotonic()
    codes = asyncio.run(main())
    assert codes == [200] * 200, sorted(set(codes))
    assert time.monotonic() - t < 120
    s = wait_clean(server.url)
    assert s["kv_pool"]["protected"] == 0
