"""Grammar denial of service (issue 13 item 3, 8): pathological constraints fail alone.

``regex: "a{100000}"`` and ``json_schema: {"type": "string", "minLength": 100000}`` make
outlines-core build automata for minutes and gigabytes.  While they compile, ordinary
constrained requests keep succeeding; the pathological ones get a 400 at the compile
timeout (or when their worker hits its memory cap); the scheduler's memory stays flat, no
compile worker outlives the server, and the server is well afterwards.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from typing import Any, Iterator

import httpx
import psutil
import pytest
from reliability_utils import assert_server_well, start_server

logger = logging.getLogger(__name__)
COMPILE_TIMEOUT_S = 8
PATHOLOGICAL = [{"regex": "a{100000}"}, {"json_schema": json.dumps({"type": "string", "minLength": 100000})}]
ORDINARY = [
    ({"choices": ["yes", "no"]}, lambda t: t in ("yes", "no")),
    ({"regex": "[0-9]{3}-[0-9]{4}"}, lambda t: re.fullmatch("[0-9]{3}-[0-9]{4}", t)),
    ({"json_schema": json.dumps({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})},
     lambda t: isinstance(json.loads(t)["n"], int)),
]


@pytest.fixture(scope="module")
def dos_server(shipped_model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    old = os.environ.get("SGLITE_GRAMMAR_WORKER_MEM_MB")
    os.environ["SGLITE_GRAMMAR_WORKER_MEM_MB"] = "768"  # inherited by the server's scheduler
    try:
        handle = start_server(shipped_model_path, tmp_path_factory, grammar_compile_timeout=COMPILE_TIMEOUT_S)
    finally:
        if old is None:
            os.environ.pop("SGLITE_GRAMMAR_WORKER_MEM_MB", None)
        else:
            os.environ["SGLITE_GRAMMAR_WORKER_MEM_MB"] = old
    yield handle
    tree = psutil.Process(handle.process.pid).children(recursive=True)
    handle.shutdown()
    handle.log_file.close()
    gone, alive = psutil.wait_procs(tree, timeout=10)
    assert not alive, f"processes outlived the server: {[p.cmdline() for p in alive]}"


def _generate(url: str, sampling: dict, timeout: float = 60.0) -> httpx.Response:
    body = {"text": "Answer:", "sampling_params": {"max_new_tokens": 24, "temperature": 0, **sampling}}
    return httpx.post(url + "/generate", json=body, timeout=timeout)


def _scheduler(server_pid: int) -> psutil.Process:
    """The process that owns the compile workers (the scheduler)."""
    for p in psutil.Process(server_pid).children(recursive=True):
        if any("compile_worker.py" in part for part in p.cmdline()):
            return p.parent()
    raise AssertionError("no compile worker found")


def test_pathological_grammars_fail_alone(dos_server):
    url = dos_server.url
    for sampling, check in ORDINARY:  # warm: compiled once, workers started
        r = _generate(url, sampling)
        assert r.status_code == 200 and check(r.json()["text"]), r.text
    scheduler = _scheduler(dos_server.process.pid)
    rss_before = scheduler.memory_info().rss

    replies: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        replies[i] = _generate(url, PATHOLOGICAL[i], timeout=COMPILE_TIMEOUT_S + 60)

    start = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(PATHOLOGICAL))]
    for t in threads:
        t.start()
    time.sleep(0.5)
    served = 0
    while any(t.is_alive() for t in threads) and time.monotonic() - start < COMPILE_TIMEOUT_S - 2:
        for n, (sampling, check) in enumerate(ORDINARY):
            # New specs each round, so they really compile while the bad ones hog workers.
            fresh = dict(sampling) if n else {"choices": ["yes", "no", f"maybe{served}"]}
            t0 = time.monotonic()
            r = _generate(url, fresh, timeout=30)
            assert r.status_code == 200, r.text
            assert n == 0 or check(r.json()["text"]), r.text
            assert time.monotonic() - t0 < 5.0, "an ordinary request waited on a pathological compile"
            served += 1
    for t in threads:
        t.join(COMPILE_TIMEOUT_S + 60)
    elapsed = time.monotonic() - start
    assert served >= 3
    for i, r in replies.items():
        assert r.status_code == 400, (PATHOLOGICAL[i], r.status_code, r.text)
        assert "timed out" in r.text or "out of memory" in r.text, r.text
    assert elapsed < COMPILE_TIMEOUT_S + 10, elapsed
    growth_mb = (scheduler.memory_info().rss - rss_before) / 2**20
    logger.info("grammar DoS: %d ordinary requests served meanwhile; bad ones failed after %.1f s (%s); "
                "scheduler RSS %.0f MB -> grew %.1f MB", served, elapsed,
                [r.json().get("error", {}).get("message", r.text)[-40:] for r in replies.values()],
                rss_before / 2**20, growth_mb)
    assert growth_mb < 150, f"scheduler grew by {growth_mb:.0f} MB"
    workers = [p for p in scheduler.children() if any("compile_worker.py" in x for x in p.cmdline())]
    assert len(workers) <= 3, workers
    # The failure is cached (fast 400) until /flush_cache drops it.
    t0 = time.monotonic()
    assert _generate(url, PATHOLOGICAL[0]).status_code == 400
    assert time.monotonic() - t0 < 3.0
    assert httpx.post(url + "/flush_cache", timeout=30).status_code == 200
    assert_server_well(url)


@pytest.mark.parametrize("sampling,reason", [
    ({"choices": [str(i) for i in range(2000)]}, "too many choices"),
    ({"choices": ["x" * 5000, "y"]}, "too long"),
    ({"regex": "a" * 70_000}, "too long"),
    ({"json_schema": json.dumps({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(5000)}})},
     "too long"),
])
def test_oversized_specs_are_400_up_front(dos_server, sampling, reason):
    t0 = time.monotonic()
    r = _generate(dos_server.url, sampling)
    assert r.status_code == 400 and reason in r.text, r.text
    assert time.monotonic() - t0 < 5.0
