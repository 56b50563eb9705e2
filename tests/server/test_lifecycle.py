"""API key, SIGTERM drain and the child watchdog, each on a server of its own."""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import openai
import pytest

KEY = "sk-test-123456"


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _spawned(pid: int) -> list[int]:
    out = []
    for c in _children(pid):
        try:
            with open(f"/proc/{c}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    out.append(c)
        except OSError:
            pass
    return sorted(out)


@pytest.fixture(scope="module")
def keyed(start_server):
    handle = start_server(api_key=KEY, graceful_timeout=30)
    yield handle
    handle.shutdown()


def test_api_key(keyed):
    url = keyed.url
    good = {"Authorization": f"Bearer {KEY}"}
    for bad in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        r = httpx.post(url + "/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 1}}, headers=bad)
        assert r.status_code == 401 and r.json() == {"error": "Unauthorized"}
        assert httpx.get(url + "/v1/models", headers=bad).status_code == 401
        assert httpx.get(url + "/server_info", headers=bad).status_code == 401
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/health_generate", timeout=30).status_code == 200
    assert httpx.get(url + "/metrics").status_code == 200
    assert httpx.post(url + "/generate", json={"text": "x", "sampling_params": {"max_new_tokens": 1}},
                      headers=good, timeout=30).status_code == 200
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=keyed.base_url, api_key="wrong", max_retries=0).models.list()
    c = openai.OpenAI(base_url=keyed.base_url, api_key=KEY, max_retries=0)
    assert c.completions.create(model=c.models.list().data[0].id, prompt="x", max_tokens=1).choices


def test_sigterm_drains_then_exits_0(keyed):
    good = {"Authorization": f"Bearer {KEY}"}
    kids = _spawned(keyed.process.pid)
    result: dict = {}

    def inflight() -> None:
        body = {"text": "drain", "sampling_params": {"max_new_tokens": 120, "ignore_eos": True}}
        result["r"] = httpx.post(keyed.url + "/generate", json=body, headers=good, timeout=60)

    t = threading.Thread(target=inflight)
    t.start()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # wait until the request is running
        load = httpx.get(keyed.url + "/get_load", headers=good).json()[0]
        if load["num_running_reqs"] >= 1:
            break
        time.sleep(0.05)
    keyed.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    try:
        late = httpx.post(keyed.url + "/generate", json={"text": "late"}, headers=good, timeout=10)
        assert late.status_code == 503
    except httpx.TransportError:
        pass  # already closed: also a refusal
    t.join(60)
    r = result["r"]
    assert r.status_code == 200 and r.json()["meta_info"]["finish_reason"]["type"] == "length"
    assert keyed.process.wait(60) == 0
    time.sleep(0.5)
    assert not [k for k in kids if _alive(k)]


def test_scheduler_death_gives_503_then_nonzero_exit(start_server):
    handle = start_server()
    try:
        kids = _spawned(handle.process.pid)
        assert len(kids) >= 2
        os.kill(kids[0], signal.SIGKILL)  # the scheduler is spawned first
        saw_503 = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not saw_503:
            try:
                saw_503 = httpx.get(handle.url + "/health", timeout=2).status_code == 503
            except httpx.TransportError:
                break
            time.sleep(0.1)
        assert saw_503
        code = handle.process.wait(30)
        assert code != 0
        time.sleep(0.5)
        assert not [k for k in kids if _alive(k)]
    finally:
        handle.shutdown(5)
