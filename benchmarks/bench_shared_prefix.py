"""Shared-prefix workload (SGLang's generated-shared-prefix, scaled down): radix cache on vs off.

8 groups × 16 prompts; each prompt is a group's 512-token system prompt plus a 32-token
question; 32 output tokens; the list is shuffled. Reports input tokens/s, the cache hit rate
and its ideal, ((k-1)/k)·S/(S+Q).

    python benchmarks/bench_shared_prefix.py [--model PATH]
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import SHIPPED, write_results  # noqa: E402


def workload(groups: int, per_group: int, sys_len: int, q_len: int, vocab: int, seed: int = 0):
    rng = random.Random(seed)
    prompts = []
    for _ in range(groups):
        system = [rng.randrange(10, vocab - 1) for _ in range(sys_len)]
        prompts += [system + [rng.randrange(10, vocab - 1) for _ in range(q_len)] for _ in range(per_group)]
    rng.shuffle(prompts)
    return prompts


def run(model: str, prompts, out_len: int, **server_args) -> dict:
    import sglite

    sp = {"max_new_tokens": out_len, "temperature": 0, "ignore_eos": True}
    with sglite.Engine(model_path=model, max_total_tokens=65536, **server_args) as engine:
        engine.generate(input_ids=prompts[0][:50], sampling_params=sp)  # warm-up
        engine.flush_cache()
        t = time.perf_counter()
        outs = engine.generate(input_ids=prompts, sampling_params=sp)
        dt = time.perf_counter() - t
    prompt_tokens = sum(o["meta_info"]["prompt_tokens"] for o in outs)
    cached = sum(o["meta_info"]["cached_tokens"] for o in outs)
    return {"seconds": dt, "input_tok_s": prompt_tokens / dt, "output_tok_s": len(prompts) * out_len / dt,
            "hit_rate": cached / prompt_tokens, "outputs": [o["output_ids"] for o in outs]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=SHIPPED)
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--per-group", type=int, default=16)
    ap.add_argument("--system-len", type=int, default=512)
    ap.add_argument("--question-len", type=int, default=32)
    ap.add_argument("--output-len", type=int, default=32)
    args = ap.parse_args()
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(args.model).vocab_size
    prompts = workload(args.groups, args.per_group, args.system_len, args.question_len, vocab)
    on = run(args.model, prompts, args.output_len)
    off = run(args.model, prompts, args.output_len, disable_radix_cache=True)
    k, s, q = args.per_group, args.system_len, args.question_len
    ideal = (k - 1) / k * s / (s + q)
    res = {
        "workload": {"groups": args.groups, "per_group": k, "system_len": s, "question_len": q,
                     "output_len": args.output_len},
        "radix_on": {x: on[x] for x in ("seconds", "input_tok_s", "output_tok_s", "hit_rate")},
        "radix_off": {x: off[x] for x in ("seconds", "input_tok_s", "output_tok_s", "hit_rate")},
        "ideal_hit_rate": ideal,
        "hit_rate_vs_ideal": on["hit_rate"] / ideal,
        "input_throughput_ratio": on["input_tok_s"] / off["input_tok_s"],
        "outputs_identical": on["outputs"] == off["outputs"],
        "targets": {"input_throughput_ratio": 3.0, "hit_rate_vs_ideal": 0.95},
    }
    print(f"radix on : {on['input_tok_s']:9.0f} in tok/s, hit rate {on['hit_rate']:.3f} (ideal {ideal:.3f})")
    print(f"radix off: {off['input_tok_s']:9.0f} in tok/s")
    print(f"input throughput ratio {res['input_throughput_ratio']:.2f}x (target 3x); "
          f"hit rate {res['hit_rate_vs_ideal']:.1%} of ideal (target 95%); identical outputs: {res['outputs_identical']}")
    write_results("shared_prefix", res)


if __name__ == "__main__":
    main()
