"""Helpers of the reliability suite (imported by its conftest and test modules)."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

# Smaller than the shipped model's 1024-token context: a request may fit the context but not
# the pool, which must be a 400 and never a crash in decode.
POOL_TOKENS = 600


def start_server(model_path: str, tmp_path_factory: pytest.TempPathFactory, **kw: Any) -> Any:
    """A server on a free port (its log in a temp file, printed if startup fails)."""
    from sglite_runtime.entrypoints.launcher import launch_server

    log = tmp_path_factory.mktemp("reliability-log") / "server.log"
    f = open(log, "w")
    args = dict(max_total_tokens=POOL_TOKENS, device="cpu", log_level="warning", num_threads=1,
                skip_server_warmup=True) | kw
    try:
        handle = launch_server(model_path, timeout=180, log_file=f, **args)
    except Exception:
        f.close()
        print(log.read_text())
        raise
    handle.log_path = log
    handle.log_file = f
    return handle


def assert_server_well(url: str, timeout: float = 15.0) -> dict:
    """/health answers 200 within a second, nothing runs, and the KV pool is whole
    (available + evictable == total, nothing locked). Returns the internal state."""
    t0 = time.monotonic()
    r = httpx.get(url + "/health", timeout=5)
    assert r.status_code == 200 and time.monotonic() - t0 < 1.0, (r.status_code, time.monotonic() - t0)
    deadline = time.monotonic() + timeout
    while True:
        s = httpx.get(url + "/server_info", timeout=10).json()["internal_states"][0]
        pool = s["kv_pool"]
        clean = (pool["available"] + pool["evictable"] == pool["total"] and pool["protected"] == 0
                 and s["num_running_reqs"] == 0 and s["num_waiting_reqs"] == 0)
        if clean:
            return s
        assert time.monotonic() < deadline, f"the KV pool did not come back whole: {s}"
        time.sleep(0.2)
