"""Compiled programs through the real sglang-router (two sglite replicas, cache_aware policy).

The router forwards only /generate and /v1; RuntimeEndpoint(router) places each program by a
prefill of its static prefix sent through the router (the router's own cache-aware choice),
then posts the graph to that replica. Checked: compile=True and "auto" run through the router,
a prefix-sharing batch lands each prefix group on one replica and its gens hit the cache there,
and the same prefix keeps going to the same replica.
"""
from __future__ import annotations

import json
import signal
import sys
import os

import pytest

import sglite

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "distributed"))
from test_router import Router  # noqa: E402  (the real router, started the same way)

from sglite_runtime.entrypoints.dp_launcher import start_replicas, wait_replicas  # noqa: E402
from sglite_runtime.server_args import ServerArgs  # noqa: E402

pytestmark = pytest.mark.slow

PREFIXES = {
    "a": "You are a careful librarian. Catalogue rules: " + "shelf, author, year, title; " * 12,
    "b": "You are a ship's navigator. Log format: " + "bearing, speed, wind, sea state; " * 12,
}


@pytest.fixture(scope="module")
def router(shipped_model_path):
    args = ServerArgs(model_path=shipped_model_path, max_total_tokens=4096, log_level="warning",
                      skip_server_warmup=True)
    urls, procs = start_replicas(args, 2)
    r = None
    try:
        wait_replicas(urls, procs, timeout=240)
        r = Router(urls, "cache_aware")
        yield r, urls
    finally:
        if r is not None:
            r.stop()
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except Exception:
                p.kill()


@sglite.function
def entry(s, group, item):
    s += PREFIXES[group]
    s += "\nEntry " + item + ": {\"n\": " + sglite.gen_int("n", max_tokens=6) + ", \"note\": "
    s += sglite.gen_string("note", max_tokens=8) + "}"


def test_compiled_programs_run_through_the_router(router):
    r, urls = router
    backend = sglite.RuntimeEndpoint(r.url)
    ok, why = backend.program_support()
    assert ok, why
    assert backend._programs.mode == "router" and set(backend._programs.workers.values()) == set(urls)

    st = entry.run("a", "x1", backend=backend, compile=True, temperature=0)
    assert json.loads(st["note"]) is not None and int(st["n"]) is not None
    st = entry.run("b", "y1", backend=backend, compile="auto", temperature=0)
    assert isinstance(json.loads(st["note"]), str)
    st = entry.run("b", "y2", backend=backend, compile=True, stream=True, temperature=0)
    assert "".join(st.text_iter("note")) == st["note"] and isinstance(json.loads(st["note"]), str)

    batch = [{"group": g, "item": f"{g}{i}"} for i in range(3) for g in ("a", "b")]
    states = entry.run_batch(batch, backend=backend, compile=True, temperature=0.7)
    for s in states:
        assert int(s["n"]) is not None and isinstance(json.loads(s["note"]), str)
        # The prefix was prefilled on this program's replica through the router: a cache hit.
        assert s.get_meta_info("n")["cached_tokens"] > 30

    # The router keeps placing a prefix where it placed it before (its radix tree).
    placement = backend._programs
    graph = entry.compile(group="a", item="z").graph.to_dict()
    first = placement.base_url_for(graph)
    assert all(placement.base_url_for(graph) == first for _ in range(3))
    assert first in urls
    assert placement.fallbacks == 0  # every placement was the router's own
