"""Scale-out figures: DP=2 behind sglang-router (cache_aware vs round_robin) and TP=1 vs TP=2 step time.

    python benchmarks/bench_scale_out.py [--model PATH] [--skip-tp] [--skip-dp]

DP: two replicas, the shared-prefix workload (G groups x K prompts sharing a ~220-token prefix,
shuffled) sent through the router at a fixed concurrency; reports the cache hit rate
(sum cached_tokens / sum prompt_tokens from /generate meta_info) and request/token throughput.
It runs at two KV pool sizes: one where a replica holds only about half of the prefixes (routing
decides the hit rate) and one where everything fits (round-robin then pays each prefix once per
replica). TP: ``sglite.Engine`` with tp_size 1 and 2 (gloo on CPU), decode step time of a batch;
on CPU this measures the plumbing (one all-reduce per row-parallel layer), not a speed-up.
Without ``--model`` a seeded random Llama (hidden 512, 4 layers) with the shipped tokenizer is used.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import ROOT, write_results  # noqa: E402

WORDS = ("the of and to in is was for on that with as by at from his her it an were are which this be or has had "
         "not but one their its first new also after two been other who more year time they city into only when "
         "some may over most used known three world where between school state such many during since later "
         "people part work under made").split()


def random_model(path: str, **overrides) -> str:
    """A seeded random Llama with the shipped tokenizer (the tests' helper)."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    sys.path.insert(0, os.path.join(ROOT, "tests", "runtime"))
    from conftest import make_model_with_tokenizer

    if not os.path.exists(os.path.join(path, "config.json")):
        make_model_with_tokenizer(path, "llama", **overrides)
    return path


def shared_prefix_workload(groups: int, per_group: int, prefix_words: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    prefixes = [" ".join(rng.choice(WORDS) for _ in range(prefix_words)) for _ in range(groups)]
    prompts = [f"{p} question {g}-{i}: {' '.join(rng.choice(WORDS) for _ in range(6))}"
               for g, p in enumerate(prefixes) for i in range(per_group)]
    rng.shuffle(prompts)
    return prompts


def run_policy(urls: list[str], policy: str, prompts: list[str], max_new_tokens: int, concurrency: int) -> dict:
    import requests

    from sglite_runtime.entrypoints.dp_launcher import free_port, start_router, wait_router

    for u in urls:
        requests.post(u + "/flush_cache", timeout=30).raise_for_status()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    router = start_router(urls, "127.0.0.1", port, policy, log_level="error", health_check_interval=5,
                          log_file=open(os.devnull, "w"))
    try:
        wait_router(url, len(urls), router)

        def one(p: str) -> dict:
            r = requests.post(url + "/generate", timeout=300, json={
                "text": p, "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True}})
            r.raise_for_status()
            return r.json()["meta_info"]

        t = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            metas = list(pool.map(one, prompts))
        wall = time.perf_counter() - t
    finally:
        router.send_signal(signal.SIGTERM)
        router.wait(15)
    prompt_tokens = sum(m["prompt_tokens"] for m in metas)
    cached = sum(m["cached_tokens"] for m in metas)
    out = sum(m["completion_tokens"] for m in metas)
    return {"requests": len(metas), "prompt_tokens": prompt_tokens, "cached_tokens": cached,
            "cache_hit_rate": round(cached / prompt_tokens, 4), "wall_s": round(wall, 3),
            "requests_per_s": round(len(metas) / wall, 3),
            "total_tokens_per_s": round((prompt_tokens + out) / wall, 1),
            "output_tokens_per_s": round(out / wall, 1)}


def bench_dp(model: str, pool_tokens: int, args) -> dict:
    from sglite_runtime.entrypoints.dp_launcher import start_replicas, wait_replicas
    from sglite_runtime.server_args import ServerArgs

    sargs = ServerArgs(model_path=model, max_total_tokens=pool_tokens, log_level="error", skip_server_warmup=True)
    urls, procs = start_replicas(sargs, 2, log_file=open(os.devnull, "w"))
    try:
        wait_replicas(urls, procs, timeout=600)
        prompts = shared_prefix_workload(args.groups, args.per_group)
        res = {}
        for policy in ("round_robin", "cache_aware"):
            res[policy] = run_policy(urls, policy, prompts, args.max_new_tokens, args.concurrency)
            print(f"DP=2 pool={pool_tokens} {policy}: {res[policy]}", flush=True)
        return res
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)


def bench_tp(model: str, args) -> dict:
    import sglite

    rng = random.Random(0)
    prompts = [[rng.randrange(10, 4000) for _ in range(32)] for _ in range(args.tp_batch)]
    res = {}
    for tp in (1, 2):
        with sglite.Engine(model_path=model, tp_size=tp, max_total_tokens=8192) as llm:
            params = {"max_new_tokens": args.tp_steps, "temperature": 0, "ignore_eos": True}
            llm.generate(input_ids=prompts, sampling_params={**params, "max_new_tokens": 4})  # warm-up
            times = []
            for _ in range(3):
                t = time.perf_counter()
                outs = llm.generate(input_ids=prompts, sampling_params=params)
                times.append(time.perf_counter() - t)
            wall = sorted(times)[1]
            assert all(o["meta_info"]["completion_tokens"] == args.tp_steps for o in outs)
        res[f"tp{tp}"] = {"batch": args.tp_batch, "steps": args.tp_steps, "wall_s": round(wall, 3),
                          "step_ms": round(1000 * wall / args.tp_steps, 2),
                          "output_tokens_per_s": round(args.tp_batch * args.tp_steps / wall, 1)}
        print(f"TP={tp}: {res[f'tp{tp}']}", flush=True)
    res["tp2_over_tp1_step_time"] = round(res["tp2"]["step_ms"] / res["tp1"]["step_ms"], 3)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--per-group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--pools", type=int, nargs="+", default=[640, 8192])
    ap.add_argument("--tp-batch", type=int, default=8)
    ap.add_argument("--tp-steps", type=int, default=32)
    ap.add_argument("--skip-dp", action="store_true")
    ap.add_argument("--skip-tp", action="store_true")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="sglite-bench-scale-")
    # TP needs heads divisible by 2 and a model big enough that the split is not all overhead;
    # the DP figures use the same one so prefill work (what cache hits save) is visible.
    model = args.model or random_model(os.path.join(tmp, "m512"), hidden_size=512, intermediate_size=1536,
                                       num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
    dp_model = tp_model = model
    payload: dict = {"workload": {"groups": args.groups, "per_group": args.per_group, "prefix_tokens_approx": 220,
                                  "max_new_tokens": args.max_new_tokens, "concurrency": args.concurrency},
                     "model": model if args.model else "random llama: hidden 512, 4 layers, 8 heads, 4 kv heads, "
                                                       "vocab 4096 (the shipped tokenizer)"}
    if not args.skip_dp:
        payload["dp2_router"] = {f"pool_{p}_tokens": bench_dp(dp_model, p, args) for p in args.pools}
    if not args.skip_tp:
        payload["tp_cpu_gloo"] = bench_tp(tp_model, args)
    write_results("scale_out", payload)


if __name__ == "__main__":
    main()
