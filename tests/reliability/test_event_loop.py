"""The event loop stays responsive under huge requests: the body limit (413) is checked while
reading, before parsing, and big prompts are refused without stalling ``/health``."""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable

import httpx
from reliability_utils import assert_server_well

MB = 1024 * 1024


def _worst_health_latency(url: str, action: Callable[[], Any]) -> tuple[Any, float]:
    """Run ``action`` while polling /health; return its result and the slowest /health answer."""
    worst, stop = 0.0, threading.Event()

    def poll() -> None:
        nonlocal worst
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                assert c.get(url + "/health").status_code == 200
                worst = max(worst, time.monotonic() - t0)
                time.sleep(0.02)

    t = threading.Thread(target=poll)
    t.start()
    try:
        result = action()
    finally:
        stop.set()
        t.join()
    return result, worst


def test_10mb_body_is_413_and_health_stays_fast(rserver):
    url = rserver.url
    body = json.dumps({"text": "x" * (10 * MB)}).encode()
    r, worst = _worst_health_latency(url, lambda: httpx.post(url + "/generate", content=body, timeout=60,
                                                             headers={"content-type": "application/json"}))
    assert r.status_code == 413 and "--max-request-body-bytes" in r.json()["error"]["message"], r.text
    print(f"\nworst /health latency during a 10 MB request: {worst * 1000:.0f} ms")
    assert worst < 1.0

    def chunks():  # no Content-Length: the limit is counted while the body streams in
        for _ in range(10):
            yield b'{"text": "' + b"x" * MB
        yield b'"}'

    r = httpx.post(url + "/v1/completions", content=chunks(), timeout=60, headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    r = httpx.post(url + "/run_program", content=body, timeout=60, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert_server_well(url)


def test_huge_prompts_under_the_body_limit_do_not_stall(rserver):
    url = rserver.url
    for size in (6 * MB, 200_000):  # refused by the cheap length bound / tokenized on a worker thread
        r, worst = _worst_health_latency(url, lambda: httpx.post(url + "/generate", json={"text": "ab " * (size // 3)},
                                                                 timeout=60))
        assert r.status_code == 400 and "longer than the model's context length" in r.json()["error"]["message"]
        assert worst < 1.0, (size, worst)
    r = httpx.post(url + "/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "ab " * 2_000_000}]})
    assert r.status_code == 400
    assert_server_well(url)
