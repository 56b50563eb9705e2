"""Batch-1 decode latency (TPOT): sglite Engine vs a bare PyTorch loop with a static KV cache
vs HF ``generate``, on the same model, prompt and output length.

On a CPU every side (sglite and both peers) runs at each torch thread count of ``--threads``
(default 1 and all cores) in the same run, and each side's best is reported.

    python benchmarks/bench_latency.py [--model PATH|mid] [--input-len 32] [--output-len 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import SHIPPED, TORCH_DTYPES, load_hf, median, random_requests, sync, write_results  # noqa: E402
from model_zoo import resolve_model  # noqa: E402


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
    dev = model.device
    ids = torch.tensor([prompt], device=dev)
    with torch.inference_mode():
        pos = torch.arange(len(prompt), device=dev)
        logits = model(input_ids=ids, cache=cache, cache_position=pos, use_cache=True).logits
        tok = logits[:, -1].argmax(-1, keepdim=True)
        sync()
        t = time.perf_counter()
        for i in range(n - 1):
            pos = torch.tensor([len(prompt) + i], device=dev)
            logits = model(input_ids=tok, cache=cache, cache_position=pos, use_cache=True).logits
            tok = logits[:, -1].argmax(-1, keepdim=True)
        sync()
        return (time.perf_counter() - t) / (n - 1)


def hf_generate_tpot(model, prompt: list[int], n: int) -> float:
    import torch

    ids = torch.tensor([prompt], device=model.device)
    with torch.inference_mode():
        t = time.perf_counter()
        model.generate(input_ids=ids, max_new_tokens=1, min_new_tokens=1, do_sample=False, pad_token_id=0)
        sync()
        first = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(input_ids=ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
        sync()
        total = time.perf_counter() - t
    return (total - first) / (n - 1)


def engine_kwargs(pairs: list[str]) -> dict:
    """``["a=1", "b=true"]`` → ``{"a": 1, "b": True}`` (ints, floats and booleans parsed)."""
    out: dict = {}
    for pair in pairs:
        key, _, raw = pair.partition("=")
        low = raw.lower()
        if low in ("true", "false"):
            out[key] = low == "true"
        else:
            try:
                out[key] = int(raw)
            except ValueError:
                try:
                    out[key] = float(raw)
                except ValueError:
                    out[key] = raw
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=SHIPPED, help="a folder, or shipped / mid (a ~40M random Llama, 32k vocab)")
    ap.add_argument("--threads", "--peer-threads", dest="peer_threads", type=int, nargs="+", default=None,
                    help="CPU torch thread counts swept for sglite and the peers (default: 1 and every core)")
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="results file name (default latency[_MODEL])")
    ap.add_argument("--dtype", default="float32", choices=TORCH_DTYPES, help="both sides' weights")
    ap.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                    help="extra sglite.Engine arguments (e.g. disable_cuda_graph=true); repeatable")
    args = ap.parse_args()

    import sglite
    import torch
    from transformers import AutoConfig

    label = os.path.basename(args.model) if os.path.isdir(args.model) else args.model
    args.model = resolve_model(args.model)
    vocab = AutoConfig.from_pretrained(args.model).vocab_size
    prompt = random_requests(1, (args.input_len, args.input_len), (1, 1), vocab, seed=0)[0][0]
    n = args.output_len
    res: dict = {"input_len": args.input_len, "output_len": n, "model": label}
    res["dtype"] = args.dtype
    extra = engine_kwargs(args.engine_arg)
    # Thread counts only matter on a CPU: sglite is swept like its peers, best against best
    # (an explicit num_threads engine arg pins it).
    threads = [torch.get_num_threads()] if torch.cuda.is_available() else (
        args.peer_threads or sorted({1, os.cpu_count() or 1}))
    mine: dict[int, tuple[float, float]] = {}
    for th in ([extra["num_threads"]] if "num_threads" in extra else threads):
        kw = extra if torch.cuda.is_available() else dict(extra, num_threads=th)
        with sglite.Engine(model_path=args.model, dtype=args.dtype, **kw) as engine:
            sglite_tpot(engine, prompt, 8)  # warm-up
            runs = [sglite_tpot(engine, prompt, n) for _ in range(args.repeats)]
        mine[th] = (median([r[0] for r in runs]), median([r[1] for r in runs]))
    best_th = min(mine, key=lambda k: mine[k][1])
    res["sglite_ttft_ms"], res["sglite_tpot_ms"] = mine[best_th][0] * 1e3, mine[best_th][1] * 1e3
    res["sglite_threads"] = best_th
    res["sglite_tpot_ms_by_threads"] = {str(k): v[1] * 1e3 for k, v in mine.items()}
    model = load_hf(args.model, args.dtype)
    sweep: dict[str, dict[int, float]] = {"bare_loop_tpot_ms": {}, "hf_generate_tpot_ms": {}}
    for th in threads:
        torch.set_num_threads(th)
        bare_loop_tpot(model, prompt, 8)
        sweep["bare_loop_tpot_ms"][th] = median([bare_loop_tpot(model, prompt, n) for _ in range(args.repeats)]) * 1e3
        hf_generate_tpot(model, prompt, 8)
        sweep["hf_generate_tpot_ms"][th] = median(
            [hf_generate_tpot(model, prompt, n) for _ in range(args.repeats)]) * 1e3
    for key, by_threads in sweep.items():
        best = min(by_threads, key=by_threads.get)
        res[key], res[key.replace("_tpot_ms", "_threads")] = by_threads[best], best
        res[key.replace("_ms", "_ms_by_threads")] = {str(k): v for k, v in by_threads.items()}
    res["ratio_vs_bare_loop"] = res["sglite_tpot_ms"] / res["bare_loop_tpot_ms"]
    res["ratio_vs_hf_generate"] = res["sglite_tpot_ms"] / res["hf_generate_tpot_ms"]
    res["targets"] = {"ratio_vs_bare_loop": "<= 1.1", "ratio_vs_hf_generate": "<= 0.8"}
    for k in ("sglite_ttft_ms", "sglite_tpot_ms", "bare_loop_tpot_ms", "hf_generate_tpot_ms"):
        print(f"{k:22s} {res[k]:8.3f}")
    print(f"TPOT sglite / bare loop: {res['ratio_vs_bare_loop']:.2f}x (target <= 1.1x); "
          f"sglite / HF generate: {res['ratio_vs_hf_generate']:.2f}x (target <= 0.8x); peers' best threads: "
          f"{res['bare_loop_threads']}, {res['hf_generate_threads']}")
    write_results(args.out or ("latency" if label in ("sglite-tiny", "shipped") else f"latency_{label}"), res)


if __name__ == "__main__":
    main()
