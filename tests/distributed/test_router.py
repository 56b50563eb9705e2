"""Two sglite replicas behind the real sglang-router (loopback, free ports).

* every request through the router succeeds, with the normal /generate and /v1 shapes;
* on a shared-prefix workload (8 groups x 4 prompts, shuffled, 4 in flight) cache-aware routing
  gets clearly more ``cached_tokens`` than round-robin: it sends a group to the replica that has
  its prefix, so each prefix is computed once (8 misses), while round-robin spreads every group
  over both replicas and computes most prefixes twice (about 16 misses). Both pools hold every
  prefix, so the gap is routing alone. (With requests sent one at a time, sglang-router 0.3.2's
  cache-aware policy breaks load ties toward the first worker, so everything lands there.)
* killing a replica mid-run loses no request sent after it died: the router's health check
  (1 s interval here) drops it, and a client retry covers the moment before it does.
"""

from __future__ import annotations

import os
import random
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from sglite_runtime.entrypoints.dp_launcher import (free_port, start_replicas, start_router, wait_replicas,
                                                    wait_router)
from sglite_runtime.server_args import ServerArgs

WORDS = ("the of and to in is was for on that with as by at from his her it an were are which this be or has had "
         "not but one their its first new also after two been other who more year time they city into only when "
         "some may over most used known three world where between school state such many during since later "
         "people part work under made").split()
PREFIX_WORDS = 200  # ~220 tokens
POOL_TOKENS = 4096  # every prefix fits one replica: no eviction, only routing decides hits


def shared_prefix_workload(groups: int = 8, per_group: int = 4, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    prefixes = [" ".join(rng.choice(WORDS) for _ in range(PREFIX_WORDS)) for _ in range(groups)]
    prompts = [f"{p} question {g}-{i}: {' '.join(rng.choice(WORDS) for _ in range(6))}"
               for g, p in enumerate(prefixes) for i in range(per_group)]
    rng.shuffle(prompts)
    return prompts


def generate(url: str, text: str, max_new_tokens: int = 4, timeout: float = 60) -> requests.Response:
    return requests.post(url + "/generate", timeout=timeout, json={
        "text": text, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0}})


def run_workload(url: str, prompts: list[str], concurrency: int = 2) -> list[dict]:
    with ThreadPoolExecutor(concurrency) as pool:
        responses = list(pool.map(lambda p: generate(url, p), prompts))
    assert [r.status_code for r in responses] == [200] * len(prompts), [r.text for r in responses if r.status_code != 200]
    return [r.json()["meta_info"] for r in responses]


class Router:
    def __init__(self, worker_urls: list[str], policy: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = start_router(worker_urls, "127.0.0.1", self.port, policy, log_level="warning",
                                 health_check_interval=1)
        try:
            wait_router(self.url, len(worker_urls), self.proc, timeout=60)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait(5)


@pytest.fixture(scope="module")
def replicas(tiny_llama_path):
    args = ServerArgs(model_path=tiny_llama_path, max_total_tokens=POOL_TOKENS, log_level="warning",
                      skip_server_warmup=True)
    urls, procs = start_replicas(args, 2)
    try:
        wait_replicas(urls, procs, timeout=240)
        yield urls, procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except Exception:
                p.kill()
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass


def _flush(urls: list[str]) -> None:
    for u in urls:
        assert requests.post(u + "/flush_cache", timeout=30).status_code == 200


def test_requests_through_router_succeed(replicas):
    urls, _ = replicas
    router = Router(urls, "cache_aware")
    try:
        r = generate(router.url, "Hello there")
        assert r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] == 4, r.text
        # The router routes /v1 by model id: it must be a served model name (an unknown one is 404).
        models = requests.get(router.url + "/v1/models", timeout=10).json()["data"]
        model = models[0]["id"]
        r = requests.post(router.url + "/v1/completions", timeout=60,
                          json={"model": model, "prompt": "Hello there", "max_tokens": 3, "temperature": 0})
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
        r = requests.post(router.url + "/v1/chat/completions", timeout=60,
                          json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["role"] == "assistant"
    finally:
        router.stop()


def test_cache_aware_beats_round_robin_on_shared_prefixes(replicas):
    urls, _ = replicas
    prompts = shared_prefix_workload()
    cached = {}
    for policy in ("round_robin", "cache_aware"):
        _flush(urls)
        router = Router(urls, policy)
        try:
            metas = run_workload(router.url, prompts, concurrency=4)
        finally:
            router.stop()
        cached[policy] = sum(m["cached_tokens"] for m in metas)
    print("cached tokens by policy", cached)
    total_prompt = sum(m["prompt_tokens"] for m in metas)
    prefix = total_prompt / len(prompts)  # ~ one prefix in tokens
    # Cache-aware: 24 of 32 prompts hit their group's prefix; round-robin about 16.
    assert cached["cache_aware"] > 0.65 * total_prompt, (cached, total_prompt)
    assert cached["cache_aware"] - cached["round_robin"] > 4 * prefix * 0.9, (cached, total_prompt)


def test_killing_a_replica_loses_no_later_request(replicas):
    urls, procs = replicas
    router = Router(urls, "round_robin")  # round-robin would keep sending half the traffic to the dead one
    try:
        run_workload(router.url, [f"warm {i}" for i in range(4)])
        procs[1].kill()
        procs[1].wait(10)
        killed_at = time.monotonic()
        retries = 0
        for i in range(12):  # right after the kill: at most a short retry until the health check drops it
            for attempt in range(20):
                try:
                    r = generate(router.url, f"after kill {i}", timeout=20)
                    if r.status_code == 200:
                        break
                except requests.RequestException:
                    pass
                retries += 1
                time.sleep(0.25)
            else:
                pytest.fail(f"request {i} after the kill never succeeded")
        assert time.monotonic() - killed_at < 30
        time.sleep(2.5)  # past the 1 s health interval: the dead replica is out of rotation
        metas = run_workload(router.url, [f"settled {i}" for i in range(12)], concurrency=3)
        assert all(m["completion_tokens"] == 4 for m in metas)
        workers = requests.get(router.url + "/workers", timeout=10).json()["workers"]
        healthy = {w["url"]: w["is_healthy"] for w in workers}
        assert healthy.get(urls[0]) is True and healthy.get(urls[1]) is not True, healthy
    finally:
        router.stop()


def test_dp_size_cli_is_one_server_and_stops_together(tiny_llama_path):
    """``python -m sglite.launch_server --dp-size 2``: one port answers; SIGTERM exits 0 and leaves no process."""
    psutil = pytest.importorskip("psutil")
    from sglite_runtime.entrypoints.launcher import launch_server

    handle = launch_server(model_path=tiny_llama_path, dp_size=2, max_total_tokens=1024, log_level="warning",
                           skip_server_warmup=True, timeout=240)
    try:
        metas = run_workload(handle.url, [f"one port {i}" for i in range(6)])
        assert all(m["completion_tokens"] == 4 for m in metas)
        workers = requests.get(handle.url + "/workers", timeout=10).json()["workers"]
        assert len(workers) == 2 and all(w["is_healthy"] for w in workers)
        tree = psutil.Process(handle.process.pid).children(recursive=True)
        assert len(tree) >= 3  # router + 2 replicas (+ their schedulers and detokenizers)
        handle.process.send_signal(signal.SIGTERM)
        assert handle.process.wait(60) == 0
        assert _wait_gone(tree, 10.0), [p.pid for p in tree if p.is_running()]
    finally:
        handle.shutdown(5)


def _wait_gone(procs, timeout: float) -> bool:
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return True
        time.sleep(0.2)
    return False
