"""An error no request can be blamed for stops the scheduler, and then the server must not
look alive: waiting clients get a 5xx with a message, /health is 503 within about two seconds,
the server exits non-zero and leaves no process behind, even while a non-daemon thread (a
grammar compile, in the issue) would have kept the scheduler process alive."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import httpx
import psutil
import pytest
from reliability_utils import start_server

FAULT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fault_inject")


@pytest.fixture
def faulty_server(shipped_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = os.pathsep.join(p for p in (FAULT_DIR, os.environ.get("PYTHONPATH")) if p)
    handle = start_server(shipped_model_path, tmp_path_factory, max_total_tokens=4096,
                          env={"PYTHONPATH": path, "SGLITE_TEST_FAULT": "unattributable"})
    yield handle
    handle.shutdown(5)
    handle.log_file.close()


def test_unattributable_error_stops_the_server_cleanly(faulty_server):
    url = faulty_server.url
    children = psutil.Process(faulty_server.process.pid).children(recursive=True)
    out: dict[str, Any] = {}

    def waiter() -> None:
        r = httpx.post(url + "/generate", timeout=60, json={
            "text": "a long story", "sampling_params": {"max_new_tokens": 400, "ignore_eos": True}})
        out["victim"] = (r.status_code, r.json())

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.5)
    crashed_at = time.monotonic()
    r = httpx.post(url + "/generate", json={"text": "x", "rid": "crash-1"}, timeout=60)
    assert r.status_code == 503 and "runtime stopped" in r.json()["error"]["message"], r.text
    t.join(30)
    status, body = out["victim"]
    assert status == 503 and "runtime stopped" in body["error"]["message"]
    unhealthy = False
    while time.monotonic() - crashed_at < 2.5 and not unhealthy:
        try:
            unhealthy = httpx.get(url + "/health", timeout=2).status_code == 503
        except httpx.TransportError:
            unhealthy = True  # already gone: also not "alive and hanging"
    assert unhealthy
    assert faulty_server.process.wait(30) != 0
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], [p.cmdline() for p in alive]
    assert "injected fault outside any request" in open(faulty_server.log_path).read()
