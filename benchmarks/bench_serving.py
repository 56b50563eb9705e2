"""Online serving benchmark: Poisson arrivals, streaming OpenAI completions, sglite vs a peer.

    python benchmarks/bench_serving.py --model-path /path/to/model          # full (~3-5 min)
    python benchmarks/bench_serving.py --model-path /path/to/model --quick  # CI smoke

Workload: random 256-token prompts (decoded to text), 128 output tokens (greedy, ignore_eos,
seeded), arrivals at 1, 2, 4 and 8 req/s. Both servers are driven by the same asyncio/httpx client
in the same run; the peer is ``transformers serve --continuous-batching`` on the same folder
(offline), run once per ``--peer-threads`` setting (OMP_NUM_THREADS) and taken at its best
(lowest p99 TTFT) per rate. Reports TTFT, ITL and E2E at p50/p99, throughput and the
sglite/peer ratios into results/serving.json (``--model-path mid``: serving_mid.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
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


def _pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def make_prompts(model_path: str, n: int, in_len: int, seed: int) -> list[str]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    rng = random.Random(seed)
    special = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in special]
    return [tok.decode([rng.choice(vocab) for _ in range(in_len)]) for _ in range(n)]


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, out_len: int,
                      extra: dict) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": out_len, "temperature": 0.0, "stream": True,
            "seed": 0, **extra}
    t0 = time.perf_counter()
    stamps: list[float] = []
    try:
        async with client.stream("POST", url + "/v1/completions", json=body) as r:
            if r.status_code != 200:
                return {"ok": False, "error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("choices") and chunk["choices"][0].get("text"):
                    stamps.append(time.perf_counter())
    except httpx.HTTPError as e:
        return {"ok": False, "error": repr(e)}
    if not stamps:
        return {"ok": False, "error": "no tokens"}
    return {"ok": True, "ttft": stamps[0] - t0, "e2e": stamps[-1] - t0, "chunks": len(stamps),
            "itl": [b - a for a, b in zip(stamps, stamps[1:])]}


async def run_rate(url: str, model: str, prompts: list[str], out_len: int, rate: float, seed: int,
                   extra: dict, timeout: float) -> dict:
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        tasks = []
        t0 = time.perf_counter()
        for p in prompts:
            tasks.append(asyncio.create_task(one_request(client, url, model, p, out_len, extra)))
            await asyncio.sleep(rng.expovariate(rate))
        results = await asyncio.gather(*tasks)
        wall = time.perf_counter() - t0
    ok = [r for r in results if r["ok"]]
    itl = [x for r in ok for x in r["itl"]]
    out_tokens = len(ok) * out_len
    ms = lambda v: None if v is None else round(v * 1000, 2)  # noqa: E731
    return {
        "rate_req_s": rate, "requests": len(results), "completed": len(ok),
        "errors": sorted({r["error"] for r in results if not r["ok"]})[:3],
        "ttft_ms_p50": ms(_pct([r["ttft"] for r in ok], 50)), "ttft_ms_p99": ms(_pct([r["ttft"] for r in ok], 99)),
        "itl_ms_p50": ms(_pct(itl, 50)), "itl_ms_p99": ms(_pct(itl, 99)),
        "e2e_ms_p50": ms(_pct([r["e2e"] for r in ok], 50)), "e2e_ms_p99": ms(_pct([r["e2e"] for r in ok], 99)),
        "request_throughput": round(len(ok) / wall, 3), "output_tok_s": round(out_tokens / wall, 1),
        "wall_s": round(wall, 2),
    }


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


def bench_sglite(args: argparse.Namespace, prompts_by_rate: dict) -> dict:
    from sglite_runtime.entrypoints.launcher import launch_server

    log = open(os.path.join(args.log_dir, "sglite_server.log"), "w")
    kw = {"max_total_tokens": args.max_total_tokens, "log_level": "warning"}
    if args.device:
        kw["device"] = args.device
    with launch_server(args.model_path, timeout=300, log_file=log, **kw) as h:
        model = httpx.get(h.url + "/v1/models").json()["data"][0]["id"]
        asyncio.run(run_rate(h.url, model, prompts_by_rate[args.rates[0]][:2], 8, 10.0, 1, {}, 120))  # warm-up
        return {str(r): asyncio.run(run_rate(h.url, model, prompts_by_rate[r], args.output_len, r, args.seed,
                                             {"ignore_eos": True}, args.timeout)) for r in args.rates}


def bench_peer(args: argparse.Namespace, prompts_by_rate: dict) -> dict:
    """The peer at each thread setting; per rate, the setting with the lowest p99 TTFT wins."""
    runs = {th: bench_peer_once(args, prompts_by_rate, th) for th in args.peer_threads}
    ok = {th: r for th, r in runs.items() if "unavailable" not in r}
    if not ok:
        return next(iter(runs.values()))
    out: dict[str, Any] = {"by_threads": {str(th): r for th, r in runs.items()}}
    for rate in map(str, args.rates):
        best = min(ok, key=lambda th: ok[th][rate]["ttft_ms_p99"] if ok[th][rate]["completed"] else float("inf"))
        out[rate] = {**ok[best][rate], "threads": best}
    return out


def bench_peer_once(args: argparse.Namespace, prompts_by_rate: dict, threads: int) -> dict:
    port = 30000 + random.Random().randrange(20000)
    url = f"http://127.0.0.1:{port}"
    cmd = ["transformers", "serve", "--continuous-batching", "--host", "127.0.0.1", "--port", str(port),
           "--log-level", "warning", args.model_path]
    if args.peer_device:
        cmd[2:2] = ["--device", args.peer_device]
    log = open(os.path.join(args.log_dir, "peer_server.log"), "w")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    try:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    except FileNotFoundError as e:
        return {"unavailable": f"`transformers serve` not found: {e}"}
    try:
        try:
            wait_ready(url, proc, 300)
        except RuntimeError as e:
            log.flush()
            tail = open(log.name).read()[-800:]
            return {"unavailable": f"transformers serve did not start ({e}); log tail: {tail}"}
        smoke = asyncio.run(run_rate(url, args.model_path, prompts_by_rate[args.rates[0]][:2], 8, 10.0, 1, {}, 300))
        if smoke["completed"] == 0:
            return {"unavailable": f"transformers serve failed the smoke request: {smoke['errors']}"}
        # ignore_eos is not an OpenAI field: the peer stops at EOS (rare on random prompts).
        return {"command": " ".join(cmd), **{str(r): asyncio.run(run_rate(
            url, args.model_path, prompts_by_rate[r], args.output_len, r, args.seed, {}, args.peer_timeout))
            for r in args.rates}}
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-path", default=SHIPPED, help="a folder, or shipped / mid (a ~40M random Llama)")
    ap.add_argument("--peer-threads", type=int, nargs="+", default=None,
                    help="OMP_NUM_THREADS settings swept for the peer (default: 1 and every core)")
    ap.add_argument("--quick", action="store_true", help="a few requests at one rate (CI smoke)")
    ap.add_argument("--rates", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of arrivals per rate")
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--device", default=None)
    ap.add_argument("--peer-timeout", type=float, default=45.0,
                    help="client timeout per peer request; slower requests count as not completed")
    ap.add_argument("--peer-device", default=None, help="--device for transformers serve (needs accelerate)")
    ap.add_argument("--max-total-tokens", type=int, default=65536)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--log-dir", default="/tmp")
    args = ap.parse_args()
    label = os.path.basename(args.model_path) if os.path.isdir(args.model_path) else args.model_path
    args.model_path = resolve_model(args.model_path)
    args.peer_threads = args.peer_threads or sorted({1, os.cpu_count() or 1})
    if not os.path.exists(os.path.join(args.model_path, "model.safetensors")) and not any(
            f.endswith(".safetensors") for f in os.listdir(args.model_path)):
        sys.exit(f"no weights in {args.model_path}: pass --model-path")
    if args.quick:
        args.rates, args.duration, args.output_len = [2.0], 2.0, 32
    prompts_by_rate = {r: make_prompts(args.model_path, max(2, int(r * args.duration)), args.input_len,
                                       args.seed + int(r * 10)) for r in args.rates}
    t = time.time()
    result: dict[str, Any] = {
        "model_path": args.model_path, "mode": "quick" if args.quick else "full",
        "workload": {"input_len": args.input_len, "output_len": args.output_len, "rates": args.rates,
                     "arrivals": "poisson", "duration_s_per_rate": args.duration, "greedy": True,
                     "api": "/v1/completions stream"},
    }
    result["sglite"] = bench_sglite(args, prompts_by_rate)
    result["peer"] = {"name": "transformers serve --continuous-batching"} | (
        {"unavailable": "--skip-peer"} if args.skip_peer else bench_peer(args, prompts_by_rate))
    result["total_s"] = round(time.time() - t, 1)
    result["ratios"] = ratios(result["sglite"], result["peer"], args.rates)
    result["targets"] = {"ttft_p99_ratio": "<= 0.5 at 4 and 8 req/s", "itl_p50_ratio": "<= 0.8 at 4 and 8 req/s"}
    name = ("serving_quick" if args.quick else "serving") + ("" if label in ("sglite-tiny", "shipped") else f"_{label}")
    write_results(name, result)
    print(json.dumps({k: result[k] for k in ("sglite", "peer", "ratios")}, indent=1))


def ratios(ours: dict, peer: dict, rates: list[float]) -> dict:
    """sglite / peer for p99 TTFT and p50 ITL per rate (lower is better for sglite)."""
    out = {}
    for r in map(str, rates):
        a, b = ours.get(r, {}), peer.get(r, {})
        row = {}
        for k in ("ttft_ms_p99", "itl_ms_p50", "e2e_ms_p50"):
            if a.get(k) and b.get(k):
                row[k.replace("_ms", "") + "_ratio"] = round(a[k] / b[k], 3)
        out[r] = row
    return out


if __name__ == "__main__":
    main()
