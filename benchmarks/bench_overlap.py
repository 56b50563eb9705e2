"""Overlap scheduling on vs off: offline throughput of two Engines in the same run.

The workload is bench_offline's (seeded random prompts, output lengths U[16, max_len], greedy,
ignore_eos). Both Engines are up at once and timed alternately (on, off, on, off, ...), so a
machine whose load drifts affects both alike; the median of each side is reported, and the
outputs of the two sides must be identical.

    python benchmarks/bench_overlap.py [--model PATH|mid] [--num 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import SHIPPED, random_requests, timed, write_results  # noqa: E402
from model_zoo import resolve_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=SHIPPED, help="a folder, or shipped / mid")
    ap.add_argument("--num", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    label = os.path.basename(args.model) if os.path.isdir(args.model) else args.model
    args.model = resolve_model(args.model)

    import sglite
    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(args.model).vocab_size
    reqs = random_requests(args.num, (16, args.max_len), (16, args.max_len), vocab, seed=0)
    total_out = sum(o for _, o in reqs)
    sps = [{"max_new_tokens": o, "temperature": 0, "ignore_eos": True} for _, o in reqs]
    ids = [p for p, _ in reqs]
    engines = {name: sglite.Engine(model_path=args.model, max_total_tokens=65536, disable_overlap_schedule=off)
               for name, off in (("on", False), ("off", True))}
    times: dict[str, list[float]] = {"on": [], "off": []}
    outputs: dict[str, list] = {}
    try:
        for e in engines.values():
            e.generate(input_ids=ids[:4], sampling_params=sps[:4])  # warm-up
        for _ in range(args.rounds):
            for name, e in engines.items():
                e.flush_cache()
                t, outs = timed(lambda: e.generate(input_ids=ids, sampling_params=sps))
                times[name].append(t)
                outputs[name] = [o["output_ids"] for o in outs]
                print(f"overlap {name:3s}: {total_out / t:8.1f} out tok/s ({t:.2f} s)", flush=True)
    finally:
        for e in engines.values():
            e.shutdown()
    assert outputs["on"] == outputs["off"], "overlap changed the outputs"
    res = {"model": label, "num_requests": args.num, "output_tokens": total_out, "rounds": args.rounds,
           "on_tok_s": [total_out / t for t in times["on"]], "off_tok_s": [total_out / t for t in times["off"]]}
    res["on_median_tok_s"] = statistics.median(res["on_tok_s"])
    res["off_median_tok_s"] = statistics.median(res["off_tok_s"])
    res["ratio_on_vs_off"] = res["on_median_tok_s"] / res["off_median_tok_s"]
    res["target"] = 1.2  # issue 16
    print(f"overlap on/off: {res['ratio_on_vs_off']:.2f}x (target 1.2x); outputs identical")
    suffix = "" if label in ("sglite-tiny", "shipped") else f"_{label}"
    write_results(args.out or f"overlap{suffix}", res)


if __name__ == "__main__":
    main()
