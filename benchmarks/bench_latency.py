"""Batch-1 decode latency (TPOT): sglite Engine vs a bare PyTorch loop with a static KV cache
vs HF ``generate``, on the same model, prompt and output length.

    python benchmarks/bench_latency.py [--model PATH] [--input-len 32] [--output-len 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import SHIPPED, load_hf, median, random_requests, write_results  # noqa: E402


def sglite_tpot(engine, prompt: list[int], n: int) -> tuple[float, float]:
    """(TTFT, TPOT) from stream chunk arrival times."""
    t0 = time.perf_counter()
    stamps = []
    for chunk in engine.generate(input_ids=prompt, sampling_params={"max_new_tokens": n, "temperature": 0,
                                                                     "ignore_eos": True}, stream=True):
        stamps.extend([time.perf_counter()] * max(len(chunk["output_ids"]), 1))
    ttft = stamps[0] - t0
    return ttft, (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def bare_loop_tpot(model, prompt: list[int], n: int) -> float:
    """Greedy decode with transformers' StaticCache: the lower bound a Python loop can reach."""
    import torch
    from transformers import StaticCache

    cache = StaticCache(config=model.config, max_cache_len=len(prompt) + n + 1)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        pos = torch.arange(len(prompt))
        logits = model(input_ids=ids, cache=cache, cache_position=pos, use_cache=True).logits
        tok = logits[:, -1].argmax(-1, keepdim=True)
        t = time.perf_counter()
        for i in range(n - 1):
            pos = torch.tensor([len(prompt) + i])
            logits = model(input_ids=tok, cache=cache, cache_position=pos, use_cache=True).logits
            tok = logits[:, -1].argmax(-1, keepdim=True)
        return (time.perf_counter() - t) / (n - 1)


def hf_generate_tpot(model, prompt: list[int], n: int) -> float:
    import torch

    ids = torch.tensor([prompt])
    with torch.inference_mode():
        t = time.perf_counter()
        model.generate(input_ids=ids, max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=0)
        first = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        total = time.perf_counter() - t
    return (total - first) / (n - 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=SHIPPED)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    import sglite
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(args.model).vocab_size
    prompt = random_requests(1, (args.input_len, args.input_len), (1, 1), vocab, seed=0)[0][0]
    n = args.output_len
    res: dict = {"input_len": args.input_len, "output_len": n, "model": os.path.basename(args.model)}
    with sglite.Engine(model_path=args.model) as engine:
        sglite_tpot(engine, prompt, 8)  # warm-up
        runs = [sglite_tpot(engine, prompt, n) for _ in range(args.repeats)]
        res["sglite_ttft_ms"] = median([r[0] for r in runs]) * 1e3
        res["sglite_tpot_ms"] = median([r[1] for r in runs]) * 1e3
    model = load_hf(args.model)
    bare_loop_tpot(model, prompt, 8)
    res["bare_loop_tpot_ms"] = median([bare_loop_tpot(model, prompt, n) for _ in range(args.repeats)]) * 1e3
    hf_generate_tpot(model, prompt, 8)
    res["hf_generate_tpot_ms"] = median([hf_generate_tpot(model, prompt, n) for _ in range(args.repeats)]) * 1e3
    res["ratio_vs_bare_loop"] = res["sglite_tpot_ms"] / res["bare_loop_tpot_ms"]
    res["ratio_vs_hf_generate"] = res["sglite_tpot_ms"] / res["hf_generate_tpot_ms"]
    res["targets"] = {"ratio_vs_bare_loop": "<= 1.2"}
    for k in ("sglite_ttft_ms", "sglite_tpot_ms", "bare_loop_tpot_ms", "hf_generate_tpot_ms"):
        print(f"{k:22s} {res[k]:8.3f}")
    print(f"TPOT sglite / bare loop: {res['ratio_vs_bare_loop']:.2f}x (target <= 1.2x); "
          f"sglite / HF generate: {res['ratio_vs_hf_generate']:.2f}x")
    write_results("latency", res)


if __name__ == "__main__":
    main()
