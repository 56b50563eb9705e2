"""Online serving benchmark: Poisson arrivals, streaming OpenAI completions, sglite vs a peer.

    python benchmarks/bench_serving.py                       # shipped model, 1/2/4/8 req/s (~5 min)
    python benchmarks/bench_serving.py --model mid           # ~40M random Llama, 4 and 8 req/s (~10 min)
    python benchmarks/bench_serving.py --model mid --quick   # a few requests at one rate (smoke)

Workload: random ``--input-len``-token prompts (decoded to text and trimmed so that they
re-tokenize to about that length), ``--output-len`` tokens (greedy, seeded; ignore_eos for
sglite, which the peer lacks: it may stop early at EOS, counted in ``short_outputs``). Per rate,
one seeded Poisson arrival schedule over ``--duration`` seconds is replayed identically against
each server (open loop), with the same per-request ``--timeout`` (default 2 x duration) counted
from each request's arrival: a request not finished by then is cancelled and counted as
unfinished, so a run ends by duration + timeout even when a server cannot keep up.

The peer is ``transformers serve --continuous-batching`` on the same folder (offline), run once
per ``--peer-threads`` (OMP_NUM_THREADS) x ``--peer-kv-tokens`` setting and taken at its best
per rate (most requests completed, then lowest p99 TTFT). Its paged KV cache is sized
explicitly, by default like sglite's pool (``--max-total-tokens``): left to itself on a CPU it
takes 90% of the free host memory (13 GB here), which takes ~50 s to allocate and got it
OOM-killed on a busy machine. Smaller caches did worse under load (mid, 4 req/s, 2 threads:
8/12 done with 4096 tokens, 12/12 with 65536), and so did a smaller ``--peer-max-batch-tokens``
(512: 1.15 req/s served vs 1.27 with its default, 8192).

A side is *saturated* at a rate when requests were left unfinished at the deadline, or it
completed requests at under 75% of the rate they arrived (``window_req_s``: completions over the
wall time less the fastest request's latency), or its queue grew (``in_system_end`` > 1.5 x
``in_system_half`` + 2: requests in the system at the end of the arrivals and halfway); its
latency percentiles (over the requests it served) then mostly measure its queue, and
``request_throughput_ratio`` (completed / wall time) is the figure to compare.
Results: results/serving.json (``--model mid``: serving_mid.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SHIPPED, write_results  # noqa: E402
from model_zoo import resolve_model  # noqa: E402

SATURATION_FRACTION = 0.75  # completions / arrivals per second below this: saturated
QUEUE_GROWTH = 1.5  # requests in the system at the end of the arrivals / halfway, above this: saturated
PEER_PAGE_SIZE = 256  # tokens per page of the peer's paged KV cache (its default)


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def poisson_arrivals(rate: float, duration: float, seed: int) -> list[float]:
    """Seeded Poisson arrival offsets (seconds) within ``[0, duration)``; at least two."""
    rng = random.Random(seed)
    out, t = [0.0], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            break
        out.append(t)
    return out if len(out) >= 2 else [0.0, min(duration, 1.0 / rate)]


def make_prompts(model_path: str, n: int, in_len: int, seed: int) -> tuple[list[str], list[int]]:
    """Random-token texts that re-tokenize to about ``in_len`` tokens, and their token counts.

    Decoded random ids re-tokenize longer (byte-level merges split differently), so the text is
    re-encoded, cut to ``in_len`` tokens and decoded again until it stops shrinking.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    rng = random.Random(seed)
    special = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in special]
    prompts: list[str] = []
    lens: list[int] = []
    for _ in range(n):
        text = str(tok.decode([rng.choice(vocab) for _ in range(in_len)]))
        for _ in range(4):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            if len(ids) <= in_len:
                break
            text = str(tok.decode(ids[:in_len]))
        prompts.append(text)
        lens.append(len(tok(text)["input_ids"]))
    return prompts, lens


async def one_request(client: httpx.AsyncClient, url: str, body: dict, rec: dict) -> None:
    """Stream one completion, stamping ``rec`` as chunks arrive (so a cancelled request keeps
    what it got): text chunk times, the finishing chunk's time and its usage."""
    rec["t0"] = time.perf_counter()
    async with client.stream("POST", url + "/v1/completions", json=body) as r:
        if r.status_code != 200:
            rec["error"] = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
            return
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if "error" in chunk:
                rec["error"] = f"stream error: {str(chunk['error'])[:200]}"
                return
            choice = (chunk.get("choices") or [{}])[0]
            if choice.get("text"):
                rec["stamps"].append(now)
            if chunk.get("usage"):
                rec["tokens"] = chunk["usage"].get("completion_tokens")
            if choice.get("finish_reason"):
                rec["finish"] = now
    if "finish" not in rec:
        rec["error"] = "stream ended without a finish_reason"


async def run_rate(url: str, model: str, prompts: list[str], arrivals: list[float], out_len: int,
                   extra: dict, timeout: float) -> tuple[list[dict], float]:
    """Open loop: request i starts at ``arrivals[i]`` and is cancelled ``timeout`` s later if not
    done. Returns one record per request and the wall time until the last one settled."""
    recs: list[dict] = [{"stamps": []} for _ in prompts]
    limits = httpx.Limits(max_connections=len(prompts) + 4)
    http_timeout = httpx.Timeout(timeout, connect=min(timeout, 30.0))

    async def fire(i: int, client: httpx.AsyncClient, start: float) -> None:
        await asyncio.sleep(max(0.0, start + arrivals[i] - time.perf_counter()))
        body = {"model": model, "prompt": prompts[i], "max_tokens": out_len, "temperature": 0.0,
                "stream": True, "seed": 0, **extra}
        try:
            await asyncio.wait_for(one_request(client, url, body, recs[i]), timeout)
        except asyncio.TimeoutError:
            recs[i]["timed_out"] = True
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            recs[i]["error"] = repr(e)[:300]
        recs[i]["end"] = time.perf_counter()

    async with httpx.AsyncClient(timeout=http_timeout, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(fire(i, client, start) for i in range(len(prompts))))
        wall = time.perf_counter() - start
    return recs, wall


def summarize(recs: list[dict], rate: float, duration: float, wall: float, out_len: int,
              timeout: float) -> dict:
    """Counts (offered / completed / unfinished at the deadline / failed), latency percentiles
    over what was measured, throughput, and whether the side was saturated at this rate.

    TTFT is the time to the first streamed output: the first text chunk, or the finishing chunk
    when the detokenizer held all text back until then (``held_back``: a random model's greedy
    output can repeat a token that ends inside a UTF-8 sequence; the peer then streams no text).
    """
    done = [r for r in recs if "finish" in r and "error" not in r and not r.get("timed_out")]
    timed_out = [r for r in recs if r.get("timed_out")]
    failed = [r for r in recs if "error" in r]

    def first(r: dict) -> float | None:
        t = r["stamps"][0] if r["stamps"] else r.get("finish")
        return None if t is None else t - r["t0"]

    # A request cut at its deadline before any output has a TTFT above the timeout (censored):
    # it sorts last, and a percentile that lands on one is reported as None.
    ttft = [math.inf if t is None else t for t in (first(r) for r in recs if "t0" in r and "error" not in r)]
    itl = [b - a for r in done for a, b in zip(r["stamps"], r["stamps"][1:])]
    e2e = [r["finish"] - r["t0"] for r in done]
    tokens = [r["tokens"] if r.get("tokens") is not None else out_len for r in done]
    offered_rate = len(recs) / duration
    achieved = len(done) / wall if wall > 0 else 0.0
    # Kept up or not, two ways. (1) Completions per second over the arrival window (the wall time
    # less the fastest request's latency, the tail any server needs after the last arrival)
    # against the arrival rate. (2) The queue: requests in the system halfway through the
    # arrivals and at their end; a server that keeps up holds about rate x latency at both, one
    # that does not holds about twice as many at the end. (1) misses a server that admits
    # everything and slows every request down alike (even the fastest is slow); (2) catches it.
    window = wall - (min(e2e) if e2e else 0.0)
    window_rate = len(done) / window if window > 0 else 0.0
    origin = min((r["t0"] for r in recs if "t0" in r), default=0.0)

    def in_system(t: float) -> int:
        return sum(1 for r in recs if "t0" in r and r["t0"] <= origin + t < r.get("end", r.get("finish", math.inf)))

    half, end = in_system(duration / 2), in_system(duration)
    ms = lambda v: None if v is None or v == math.inf else round(v * 1000, 2)  # noqa: E731
    return {
        "rate_req_s": rate, "offered": len(recs), "completed": len(done), "unfinished": len(timed_out),
        "unfinished_with_first_token": sum(1 for r in timed_out if first(r) is not None),
        "failed": len(failed), "errors": sorted({r["error"] for r in failed})[:3],
        "held_back": sum(1 for r in done if not r["stamps"] or r["stamps"][0] >= r["finish"]),
        "short_outputs": sum(1 for t in tokens if t < out_len),
        "ttft_censored": sum(1 for t in ttft if t == math.inf),
        "ttft_ms_p50": ms(_pct(ttft, 50)), "ttft_ms_p99": ms(_pct(ttft, 99)),
        "itl_ms_p50": ms(_pct(itl, 50)), "itl_ms_p99": ms(_pct(itl, 99)),
        "e2e_ms_p50": ms(_pct(e2e, 50)), "e2e_ms_p99": ms(_pct(e2e, 99)),
        "offered_req_s": round(offered_rate, 3), "request_throughput": round(achieved, 3),
        "output_tok_s": round(sum(tokens) / wall, 1) if wall > 0 else 0.0,
        "window_req_s": round(window_rate, 3), "in_system_half": half, "in_system_end": end,
        "saturated": (bool(timed_out) or window_rate < SATURATION_FRACTION * offered_rate
                      or end > QUEUE_GROWTH * half + 2),
        "wall_s": round(wall, 2), "timeout_s": timeout,
    }


def measure(url: str, model: str, workload: dict, args: argparse.Namespace, extra: dict) -> dict:
    """Every rate on one server, each after the server answers a 1-token request (settled)."""
    out = {}
    for rate in args.rates:
        prompts, arrivals = workload[rate]
        settle = asyncio.run(run_rate(url, model, prompts[:1], [0.0], 1, {}, 300.0))
        recs, wall = asyncio.run(run_rate(url, model, prompts, arrivals, args.output_len, extra, args.timeout))
        out[str(rate)] = {**summarize(recs, rate, args.duration, wall, args.output_len, args.timeout),
                          "settle_s": round(settle[1], 2)}
    return out


def warm_up(url: str, model: str, workload: dict, args: argparse.Namespace) -> dict:
    """Two short requests (loads lazily-initialized state); the same on both sides."""
    prompts = workload[args.rates[0]][0][:2]
    recs, wall = asyncio.run(run_rate(url, model, prompts, [0.0, 0.1], 8, {}, 300.0))
    return summarize(recs, 10.0, 0.2, wall, 8, 300.0)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"not ready within {timeout:.0f} s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def exit_note(proc: subprocess.Popen) -> str:
    code = proc.poll()
    if code is None:
        return "still running"
    if code == -signal.SIGKILL:
        return "killed by SIGKILL (on Linux usually the kernel's OOM killer: see dmesg)"
    return f"exited with code {code}"


def bench_sglite(args: argparse.Namespace, workload: dict) -> dict:
    from sglite_runtime.entrypoints.launcher import launch_server

    log = open(os.path.join(args.log_dir, "sglite_server.log"), "w")
    kw = {"max_total_tokens": args.max_total_tokens, "log_level": "warning"}
    if args.device:
        kw["device"] = args.device
    with launch_server(args.model_path, timeout=300, log_file=log, **kw) as h:
        model = httpx.get(h.url + "/v1/models").json()["data"][0]["id"]
        warm_up(h.url, model, workload, args)
        return measure(h.url, model, workload, args, {"ignore_eos": True})


def pick_best(runs: dict[str, dict], rates: list[float]) -> dict:
    """Per rate, the setting that completed the most requests, then the lowest p99 TTFT."""
    out: dict[str, Any] = {"by_setting": runs}
    if not any(str(rate) in r for r in runs.values() for rate in rates):
        out["unavailable"] = "; ".join(f"{k}: {r.get('unavailable', 'no figures')}" for k, r in runs.items())
        return out
    for rate in map(str, rates):
        ok = {k: r[rate] for k, r in runs.items() if rate in r}  # a server that died stops its sweep
        if ok:
            best = min(ok, key=lambda k: (-ok[k]["completed"], ok[k]["ttft_ms_p99"] or math.inf,
                                          ok[k]["ttft_censored"]))
            out[rate] = {**ok[best], "setting": best}
    return out


def peer_command(args: argparse.Namespace, port: int, kv_tokens: int, batch_tokens: int | None) -> list[str]:
    cmd = ["transformers", "serve", "--continuous-batching", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", "--cb-block-size", str(PEER_PAGE_SIZE),
           "--cb-num-blocks", str(math.ceil(kv_tokens / PEER_PAGE_SIZE)), args.model_path]
    if batch_tokens:
        cmd[-1:-1] = ["--cb-max-batch-tokens", str(batch_tokens)]
    if args.peer_device:
        cmd[2:2] = ["--device", args.peer_device]
    return cmd


def bench_peer_once(args: argparse.Namespace, workload: dict, threads: int, kv_tokens: int,
                    batch_tokens: int | None) -> dict:
    port = 30000 + random.Random().randrange(20000)
    url = f"http://127.0.0.1:{port}"
    cmd = peer_command(args, port, kv_tokens, batch_tokens)
    log_path = os.path.join(args.log_dir, f"peer_server_t{threads}_kv{kv_tokens}_b{batch_tokens}.log")
    log = open(log_path, "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}

    def tail() -> str:
        log.flush()
        return open(log_path).read()[-600:]

    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    except FileNotFoundError as e:
        return {"unavailable": f"`transformers serve` not found: {e}"}
    try:
        try:
            wait_ready(url, proc, 300)
        except RuntimeError as e:
            return {"unavailable": f"transformers serve did not start ({e}); log tail: {tail()}"}
        smoke = warm_up(url, args.model_path, workload, args)
        if smoke["completed"] == 0:
            return {"unavailable": f"transformers serve failed the warm-up requests: {smoke['errors']} "
                                   f"(server {exit_note(proc)}); log tail: {tail()}"}
        # ignore_eos is not an OpenAI field: the peer stops at EOS (rare on random prompts).
        out: dict[str, Any] = {"command": " ".join(cmd)}
        for rate in args.rates:
            out.update(measure(url, args.model_path, {rate: workload[rate]}, _only(args, rate), {}))
            if proc.poll() is not None:
                out[str(rate)]["server"] = f"{exit_note(proc)} during this rate; log tail: {tail()}"
                break
        return out
    finally:
        stop(proc)


def _only(args: argparse.Namespace, rate: float) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "rates": [rate]})


def ratios(ours: dict, peer: dict, rates: list[float]) -> dict:
    """sglite / peer per rate where both sides have the figure (latency: lower is better for
    sglite; request throughput: higher is better), with each side's saturation."""
    out = {}
    for r in map(str, rates):
        a, b = ours.get(r, {}), peer.get(r, {})
        row: dict[str, Any] = {}
        for k in ("ttft_ms_p99", "itl_ms_p50", "e2e_ms_p50"):
            if a.get(k) and b.get(k):
                row[k.replace("_ms", "") + "_ratio"] = round(a[k] / b[k], 3)
        if a.get("request_throughput") and b.get("request_throughput"):
            row["request_throughput_ratio"] = round(a["request_throughput"] / b["request_throughput"], 3)
        if a and b:
            row["completed"] = f"{a['completed']}/{a['offered']} vs {b['completed']}/{b['offered']}"
            row["saturated"] = {"sglite": a["saturated"], "peer": b["saturated"]}
            for side, x in (("sglite", a), ("peer", b)):
                if not x.get("e2e_ms_p50"):
                    row[f"{side}_no_latency_figures"] = (
                        f"{x['completed']}/{x['offered']} completed within the {x['timeout_s']:g} s per-request "
                        f"timeout ({x['ttft_censored']} without a first token, {x['failed']} failed)")
            if a["saturated"] or b["saturated"]:
                row["note"] = ("a side is saturated: its latencies are over the requests it served before "
                               "the timeout and mostly measure its queue; compare request_throughput_ratio")
        if a and not b:
            row["peer_no_latency_figures"] = peer.get("unavailable") or "no peer run reached this rate"
        out[r] = row
    return out


MODEL_DEFAULTS = {"mid": {"rates": [4.0, 8.0], "output_len": 64}}  # the mid-model workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", "--model", default=SHIPPED,
                    help="a folder, or shipped / mid (a ~40M random Llama)")
    ap.add_argument("--peer-threads", type=int, nargs="+", default=None,
                    help="OMP_NUM_THREADS settings swept for the peer (default: 1 and every core)")
    ap.add_argument("--peer-kv-tokens", type=int, nargs="+", default=None,
                    help="the peer's paged KV cache sizes swept (tokens; default --max-total-tokens)")
    ap.add_argument("--peer-max-batch-tokens", type=int, nargs="+", default=[0],
                    help="the peer's --cb-max-batch-tokens swept (0: its default, 8192)")
    ap.add_argument("--quick", action="store_true", help="a few requests at one rate (smoke)")
    ap.add_argument("--rates", type=float, nargs="+", default=None,
                    help="request rates (default 1 2 4 8; mid: 4 8)")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of Poisson arrivals per rate")
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=None, help="default 128; mid: 64")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=None,
                    help="per-request limit from its arrival, both sides (default max(30, 2 x duration))")
    ap.add_argument("--device", default=None)
    ap.add_argument("--peer-device", default=None, help="--device for transformers serve (needs accelerate)")
    ap.add_argument("--max-total-tokens", type=int, default=65536, help="sglite's KV pool (tokens)")
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--log-dir", default="/tmp")
    args = ap.parse_args()
    label = os.path.basename(args.model_path) if os.path.isdir(args.model_path) else args.model_path
    defaults = MODEL_DEFAULTS.get(label, {})
    args.rates = args.rates or defaults.get("rates", [1.0, 2.0, 4.0, 8.0])
    args.output_len = args.output_len or defaults.get("output_len", 128)
    args.model_path = resolve_model(args.model_path)
    args.peer_threads = args.peer_threads or sorted({1, os.cpu_count() or 1})
    args.peer_kv_tokens = args.peer_kv_tokens or [args.max_total_tokens]
    if not any(f.endswith(".safetensors") for f in os.listdir(args.model_path)):
        sys.exit(f"no weights in {args.model_path}: pass --model-path")
    if args.quick:
        args.rates, args.duration, args.output_len = args.rates[:1], 3.0, 32
    args.timeout = args.timeout or max(30.0, 2 * args.duration)
    workload: dict[float, tuple[list[str], list[float]]] = {}
    in_lens: list[int] = []
    for r in args.rates:
        arrivals = poisson_arrivals(r, args.duration, args.seed + int(r * 10))
        prompts, lens = make_prompts(args.model_path, len(arrivals), args.input_len, args.seed + int(r * 10))
        workload[r] = (prompts, arrivals)
        in_lens += lens
    t = time.time()
    result: dict[str, Any] = {
        "model_path": args.model_path, "mode": "quick" if args.quick else "full",
        "workload": {"input_len": args.input_len, "input_tokens_mean": round(sum(in_lens) / len(in_lens), 1),
                     "output_len": args.output_len, "rates": args.rates, "arrivals": "poisson, same on both sides",
                     "duration_s_per_rate": args.duration, "timeout_s_per_request": args.timeout,
                     "greedy": True, "api": "/v1/completions stream", "sglite_kv_pool_tokens": args.max_total_tokens,
                     "offered": {str(r): len(workload[r][1]) for r in args.rates}},
    }
    result["sglite"] = bench_sglite(args, workload)
    peer: dict[str, Any] = {"name": "transformers serve --continuous-batching"}
    if args.skip_peer:
        peer["unavailable"] = "--skip-peer"
    else:
        peer |= pick_best({f"{th} threads, {kv} KV tokens" + (f", batch {b} tokens" if b else ""):
                           bench_peer_once(args, workload, th, kv, b)
                           for th in args.peer_threads for kv in args.peer_kv_tokens
                           for b in args.peer_max_batch_tokens}, args.rates)
    result["peer"] = peer
    result["total_s"] = round(time.time() - t, 1)
    result["ratios"] = ratios(result["sglite"], result["peer"], args.rates)
    result["targets"] = {"ttft_p99_ratio": "<= 0.5 at 4 and 8 req/s", "itl_p50_ratio": "<= 0.8 at 4 and 8 req/s"}
    name = ("serving_quick" if args.quick else "serving") + ("" if label in ("sglite-tiny", "shipped") else f"_{label}")
    write_results(name, result)
    print(table(result))


def table(result: dict) -> str:
    """One line per side and rate: completed/offered, latencies, throughput, saturation."""
    lines = [f"{'side':8} {'rate':>5} {'done':>9} {'ttft p50/p99 ms':>21} {'itl p50 ms':>10} {'req/s':>6}"]
    for side in ("sglite", "peer"):
        if "unavailable" in result[side]:
            lines.append(f"{side:8} unavailable: {result[side]['unavailable'][:300]}")
            continue
        for rate in map(str, result["workload"]["rates"]):
            s = result[side].get(rate)
            if not s:
                continue
            lines.append(f"{side:8} {rate:>5} {s['completed']:>4}/{s['offered']:<4} "
                         f"{s['ttft_ms_p50']!s:>10}/{s['ttft_ms_p99']!s:<10} {s['itl_ms_p50']!s:>10} "
                         f"{s['request_throughput']:>6}" + ("  SATURATED" if s["saturated"] else "")
                         + (f"  ({s['setting']})" if "setting" in s else ""))
    lines.append("ratios (sglite/peer): " + json.dumps(result["ratios"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
