"""Offline throughput: sglite Engine vs HF static batching vs transformers continuous batching.

64 requests with input and output lengths U[16, 256] (seeded random tokens), greedy,
ignore_eos. Reports output tokens/s and the ratios sglite/peer.

    python benchmarks/bench_offline.py [--model PATH] [--num 64] [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import SHIPPED, hf_continuous_generate, hf_static_generate, load_hf, random_requests, timed, write_results  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=SHIPPED)
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--hf-batch-size", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="16 short requests, for a smoke run")
    args = ap.parse_args()
    if args.quick:
        args.num, args.max_len = 16, 48

    import sglite
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(args.model).vocab_size
    reqs = random_requests(args.num, (16, args.max_len), (16, args.max_len), vocab, seed=0)
    total_out = sum(o for _, o in reqs)
    results: dict = {"num_requests": args.num, "output_tokens": total_out, "model": os.path.basename(args.model)}

    with sglite.Engine(model_path=args.model, max_total_tokens=65536) as engine:
        sps = [{"max_new_tokens": o, "temperature": 0, "ignore_eos": True} for _, o in reqs]
        engine.generate(input_ids=[p for p, _ in reqs[:4]], sampling_params=sps[:4])  # warm-up
        engine.flush_cache()
        t, outs = timed(lambda: engine.generate(input_ids=[p for p, _ in reqs], sampling_params=sps))
        assert sum(o["meta_info"]["completion_tokens"] for o in outs) == total_out
        results["sglite_tok_s"] = total_out / t
        results["sglite_s"] = t
    print(f"sglite:                 {results['sglite_tok_s']:9.1f} out tok/s ({t:.1f} s)")

    model = load_hf(args.model)
    hf_static_generate(model, reqs[:2], 2)  # warm-up
    t, useful = timed(lambda: hf_static_generate(model, reqs, args.hf_batch_size))
    results["hf_static_tok_s"] = useful / t
    results["hf_static_batch_size"] = args.hf_batch_size
    print(f"HF generate (static):   {results['hf_static_tok_s']:9.1f} out tok/s ({t:.1f} s)")
    try:
        t, n = timed(lambda: hf_continuous_generate(model, reqs))
        results["hf_generate_batch_tok_s"] = n / t
        print(f"HF generate_batch (CB): {results['hf_generate_batch_tok_s']:9.1f} out tok/s ({t:.1f} s)")
    except Exception as e:  # report, don't hide: the peer could not run
        results["hf_generate_batch_error"] = repr(e)
        print(f"HF generate_batch failed: {e!r}")

    results["ratio_vs_hf_static"] = results["sglite_tok_s"] / results["hf_static_tok_s"]
    if "hf_generate_batch_tok_s" in results:
        results["ratio_vs_hf_generate_batch"] = results["sglite_tok_s"] / results["hf_generate_batch_tok_s"]
    results["targets"] = {"ratio_vs_hf_static": 3.0, "ratio_vs_hf_generate_batch": 1.5}
    for k in ("ratio_vs_hf_static", "ratio_vs_hf_generate_batch"):
        if k in results:
            print(f"{k}: {results[k]:.2f}x (target {results['targets'][k]}x)")
    write_results("offline" if not args.quick else "offline_quick", results)


if __name__ == "__main__":
    main()
