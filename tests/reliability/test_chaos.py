"""Chaos: the scheduler is killed (SIGKILL) while clients stream and wait. Every client gets an
error (a 5xx with a message, never a hang or a 499) within seconds, /health turns 503 within
about two seconds, the server exits non-zero, and no child process is left behind."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import httpx
import psutil

LONG = {"max_new_tokens": 250, "ignore_eos": True, "temperature": 0.0}


def _stream(url: str, path: str, body: dict, first: threading.Event, out: dict, key: str) -> None:
    lines = []
    try:
        with httpx.stream("POST", url + path, json=body | {"stream": True}, timeout=60) as r:
            out[key + ":status"] = r.status_code
            for line in r.iter_lines():
                if line.startswith("data: "):
                    lines.append(line[6:])
                    first.set()
    except httpx.TransportError as e:
        lines.append(f"transport error: {e!r}")
    out[key] = lines
    out[key + ":t"] = time.monotonic()
    first.set()


def _post(url: str, path: str, body: dict, out: dict, key: str) -> None:
    try:
        r = httpx.post(url + path, json=body, timeout=60)
        out[key] = (r.status_code, r.text)
    except httpx.TransportError as e:
        out[key] = (None, repr(e))
    out[key + ":t"] = time.monotonic()


def test_kill_scheduler_mid_stream(rserver):
    """Runs last (conftest orders it so): it ends the shared server."""
    url = rserver.url
    server = psutil.Process(rserver.process.pid)
    children = server.children(recursive=True)
    out: dict[str, Any] = {}
    started = [threading.Event() for _ in range(2)]
    threads = [
        threading.Thread(target=_stream, args=(url, "/generate", {"text": "once upon", "sampling_params": LONG},
                                               started[0], out, "gen_stream")),
        threading.Thread(target=_stream, args=(url, "/v1/completions", {"prompt": "a b c", "max_tokens": 250,
                                                                        "ignore_eos": True}, started[1], out, "v1_stream")),
        threading.Thread(target=_post, args=(url, "/generate", {"text": "hello", "sampling_params": LONG}, out, "gen")),
        threading.Thread(target=_post, args=(url, "/v1/completions", {"prompt": "x y", "max_tokens": 250,
                                                                      "ignore_eos": True}, out, "v1")),
    ]
    for t in threads[:2]:
        t.start()
    for e in started:
        assert e.wait(60), "the streams never started"
    for t in threads[2:]:  # running or queued when the scheduler dies: either way a 5xx
        t.start()
    time.sleep(0.3)
    scheduler_pid = httpx.get(url + "/server_info").json()["internal_states"][0]["pid"]
    assert scheduler_pid in [p.pid for p in children]
    killed_at = time.monotonic()
    os.kill(scheduler_pid, signal.SIGKILL)

    health_503_after = None
    while time.monotonic() - killed_at < 10:
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 503:
                health_503_after = time.monotonic() - killed_at
                break
        except httpx.TransportError:
            break
        time.sleep(0.05)
    for t in threads:
        t.join(30)
        assert not t.is_alive(), "a client hung after the scheduler died"

    assert health_503_after is not None and health_503_after < 2.5
    print(f"\n/health 503 {health_503_after:.2f} s after the kill; clients answered within "
          f"{max(out[k] for k in out if k.endswith(':t')) - killed_at:.2f} s")
    for key in ("gen", "v1"):
        status, text = out[key]
        assert status is not None and 500 <= status < 600, (key, status, text)
        assert "runtime stopped" in json.loads(text)["error"]["message"]
    events = [json.loads(x) for x in out["gen_stream"] if x.startswith("{")]
    assert any(e.get("error", {}).get("code", 0) >= 500 for e in events), out["gen_stream"][-3:]
    assert out["v1_stream"][-1] == "[DONE]", out["v1_stream"][-3:]
    assert rserver.process.wait(30) != 0
    time.sleep(0.5)
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
