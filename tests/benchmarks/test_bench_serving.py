"""bench_serving's counting: the open-loop client against a fake SSE server (a request past its
deadline is cancelled and counted as unfinished, not lost), and the pure summary/ratio logic
(saturation, held-back text, best peer setting). No model and no peer are started."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks"))

from bench_serving import pick_best, poisson_arrivals, ratios, run_rate, summarize  # noqa: E402


class _SSE(BaseHTTPRequestHandler):
    """Prompt "fast": 3 text chunks, the last with finish_reason. "slow": one chunk then stalls.
    "held": only an empty finishing chunk (what the peer sends when its decoder holds text back).
    "bad": HTTP 400."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["prompt"]
        if prompt == "bad":
            self.send_response(400)
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"bad")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()

        def send(text: str, finish: str | None = None, usage: dict | None = None) -> None:
            chunk = {"choices": [{"index": 0, "text": text, "finish_reason": finish}]}
            if usage:
                chunk["usage"] = usage
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        try:
            if prompt == "fast":
                for i, fin in enumerate([None, None, "length"]):
                    time.sleep(0.02)
                    send(f"t{i}", fin)
                self.wfile.write(b"data: [DONE]\n\n")
            elif prompt == "held":
                time.sleep(0.05)
                send("", "length", {"completion_tokens": 2})
            elif prompt == "slow":
                send("t0")
                time.sleep(3.0)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *a):
        pass


@pytest.fixture(scope="module")
def sse_url():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _SSE)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_deadline_counts_unfinished_requests(sse_url):
    prompts = ["fast", "slow", "held", "bad"]
    t = time.perf_counter()
    recs, wall = asyncio.run(run_rate(sse_url, "m", prompts, [0.0, 0.05, 0.1, 0.15], 3, {}, timeout=0.8))
    assert time.perf_counter() - t < 2.5 and wall < 2.0  # the stalled stream was cut at its deadline
    s = summarize(recs, rate=4.0, duration=1.0, wall=wall, out_len=3, timeout=0.8)
    assert (s["offered"], s["completed"], s["unfinished"], s["failed"]) == (4, 2, 1, 1)
    assert s["unfinished_with_first_token"] == 1 and s["ttft_censored"] == 0  # fast, held, slow
    assert s["held_back"] == 1 and s["short_outputs"] == 1  # "held" reported 2 < 3 tokens
    assert "HTTP 400" in s["errors"][0]
    assert s["saturated"]  # a request was unfinished at the deadline
    assert 15 <= s["itl_ms_p50"] < 200 and s["e2e_ms_p50"] >= 50


def _rec(t0: float, stamps: list[float], finish: float | None = None, **kw) -> dict:
    r = {"t0": t0, "stamps": stamps, **kw}
    if finish is not None:
        r["finish"] = finish
    return r


def test_summarize_saturation_by_throughput():
    # 10 offered over 1 s, all done within 1.2 s: keeps up.
    recs = [_rec(i / 10, [i / 10 + 0.05, i / 10 + 0.1], i / 10 + 0.1) for i in range(10)]
    s = summarize(recs, 10.0, 1.0, 1.2, out_len=2, timeout=30)
    assert not s["saturated"] and s["completed"] == 10 and s["held_back"] == 0
    assert s["ttft_ms_p50"] == pytest.approx(50, abs=1e-6) and s["itl_ms_p50"] == pytest.approx(50, abs=1e-6)
    # A long service time alone (each takes 3 s, no queue) is not falling behind.
    slow = [_rec(i / 10, [i / 10 + 2.9], i / 10 + 3.0) for i in range(10)]
    s = summarize(slow, 10.0, 1.0, 3.9, out_len=2, timeout=30)
    assert not s["saturated"] and s["window_req_s"] == pytest.approx(10 / 0.9, rel=1e-3)
    # One finish every 0.4 s for arrivals every 0.1 s (a queue built, then drained): 2.5 req/s.
    queued = [_rec(i / 10, [0.4 * i + 0.05], 0.4 * i + 0.1) for i in range(10)]
    s = summarize(queued, 10.0, 1.0, 3.7, out_len=2, timeout=30)
    assert s["saturated"] and s["unfinished"] == 0 and s["window_req_s"] == pytest.approx(10 / 3.6, rel=1e-3)
    # Everything admitted, the first served fast, the rest finishing together near the end (what
    # an overloaded continuous-batching server does): finish-to-finish they look fast (30/s).
    bunched = [_rec(0.0, [0.05], 0.1)] + [_rec(i / 10, [2.9], 3.0 + 0.03 * i) for i in range(1, 10)]
    s = summarize(bunched, 10.0, 1.0, 3.27, out_len=2, timeout=30)
    assert s["saturated"] and s["window_req_s"] == pytest.approx(10 / 3.17, rel=1e-3)


def test_summarize_saturation_by_queue_growth():
    # Everything admitted and slowed alike: even the fastest takes 10 s, all finish after the
    # arrivals end (20 s), so the window rate looks fine but the queue doubled from 10 s to 20 s.
    recs = [_rec(i * 0.25, [i * 0.25 + 1.0], 21.0 + 0.1 * i) for i in range(80)]
    for r in recs:
        r["end"] = r["finish"] + 0.001
    s = summarize(recs, 4.0, 20.0, 29.0, out_len=2, timeout=40)
    assert s["window_req_s"] >= 0.75 * s["offered_req_s"]  # criterion (1) alone would miss it
    assert (s["in_system_half"], s["in_system_end"]) == (41, 80) and s["saturated"]
    # Keeping up with a 2 s latency: about 8 in the system at both points.
    recs = [_rec(i * 0.25, [i * 0.25 + 0.5], i * 0.25 + 2.0) for i in range(80)]
    s = summarize(recs, 4.0, 20.0, 21.8, out_len=2, timeout=40)
    assert (s["in_system_half"], s["in_system_end"]) == (8, 7) and not s["saturated"]


def test_ttft_percentile_censored_at_the_deadline():
    recs = [_rec(0.0, [0.1 * (i + 1)], 0.1 * (i + 1) + 0.5) for i in range(3)] + [_rec(0.0, [], timed_out=True)]
    s = summarize(recs, 4.0, 1.0, 2.0, out_len=2, timeout=1.5)
    assert s["ttft_censored"] == 1 and s["ttft_ms_p99"] is None  # above the timeout: not a number
    assert s["ttft_ms_p50"] == pytest.approx(300, abs=1e-6)  # the median is still known


def test_poisson_arrivals_seeded_and_bounded():
    a = poisson_arrivals(8.0, 20.0, 80)
    assert a == poisson_arrivals(8.0, 20.0, 80) and a != poisson_arrivals(8.0, 20.0, 81)
    assert a[0] == 0.0 and all(0 <= x < 20.0 for x in a) and a == sorted(a)
    assert 100 < len(a) < 220  # about rate x duration
    assert len(poisson_arrivals(0.01, 1.0, 0)) == 2


def _side(completed: int, ttft99: float | None, tput: float, sat: bool) -> dict:
    return {"completed": completed, "offered": 10, "ttft_ms_p99": ttft99, "itl_ms_p50": 5.0 if completed else None,
            "e2e_ms_p50": 100.0 if completed else None, "request_throughput": tput, "saturated": sat,
            "ttft_censored": 0 if completed else 7, "failed": 0, "timeout_s": 40.0}


def test_pick_best_prefers_completed_then_ttft_and_ratios():
    runs = {"1t": {"command": "x", "4.0": _side(10, 900.0, 1.0, True)},
            "2t": {"command": "y", "4.0": _side(6, 100.0, 0.5, True)},
            "4t": {"unavailable": "failed the warm-up requests"}}
    best = pick_best(runs, [4.0])
    assert best["4.0"]["setting"] == "1t" and set(best["by_setting"]) == {"1t", "2t", "4t"}
    r = ratios({"4.0": _side(10, 450.0, 2.0, False)}, best, [4.0])["4.0"]
    assert r["ttft_p99_ratio"] == 0.5 and r["request_throughput_ratio"] == 2.0
    assert r["saturated"] == {"sglite": False, "peer": True} and r["completed"] == "10/10 vs 10/10"
    assert "request_throughput_ratio" in r["note"]
    # No figures on one side: no latency ratios, but the counts are still reported.
    r = ratios({"4.0": _side(10, 450.0, 2.0, False)}, {"4.0": _side(0, None, 0.0, True)}, [4.0])["4.0"]
    assert "ttft_p99_ratio" not in r and r["completed"] == "10/10 vs 0/10"
    assert r["peer_no_latency_figures"] == ("0/10 completed within the 40 s per-request timeout "
                                            "(7 without a first token, 0 failed)")
    died = pick_best({"1t": {"4.0": _side(3, 900.0, 0.3, True), "8.0": {**_side(0, None, 0.0, True),
                                                                    "server": "killed by SIGKILL"}}}, [4.0, 8.0, 16.0])
    assert died["4.0"]["setting"] == "1t" and "killed" in died["8.0"]["server"] and "16.0" not in died
    none = pick_best({"1t": {"unavailable": "did not start"}}, [4.0])
    assert "did not start" in none["unavailable"] and "4.0" not in none
    r = ratios({"4.0": _side(10, 450.0, 2.0, False)}, none, [4.0])["4.0"]
    assert r == {"peer_no_latency_figures": "1t: did not start"}
