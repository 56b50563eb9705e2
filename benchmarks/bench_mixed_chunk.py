"""--enable-mixed-chunk on vs off: do arriving prompts stall running streams?

An in-process scheduler decodes ``--running`` streams while a new prompt arrives every
``--every`` steps. Reported per setting (both in the same run, alternating): the p50/p99/max gap
between two tokens of a running stream (ITL), the mean time to first token of the arrivals,
and the output throughput. Outputs must be identical.

    python benchmarks/bench_mixed_chunk.py [--model PATH|mid] [--running 16] [--arrivals 16]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import SHIPPED, write_results  # noqa: E402
from model_zoo import resolve_model  # noqa: E402


def run(model: str, mixed: bool, args: argparse.Namespace) -> dict:
    from sglite_runtime.managers.io_struct import TokenizedGenerateReqInput
    from sglite_runtime.managers.scheduler import Scheduler
    from sglite_runtime.server_args import ServerArgs

    s = Scheduler(ServerArgs(model_path=model, device="cpu", max_total_tokens=65536, enable_mixed_chunk=mixed,
                             chunked_prefill_size=args.chunk))
    rng = random.Random(0)

    def submit(rid: str, n_in: int, n_out: int) -> None:
        ids = [rng.randrange(5, 500) for _ in range(n_in)]
        s.process_input_requests([TokenizedGenerateReqInput(
            rid=rid, input_text=None, input_ids=ids, stream=True,
            sampling_params={"max_new_tokens": n_out, "temperature": 0, "ignore_eos": True})])

    for i in range(args.running):
        submit(f"run{i}", 32, args.decode_len)
    last: dict[str, float] = {}
    gaps: list[float] = []
    arrived: dict[str, float] = {}
    ttft: list[float] = []
    outputs: dict[str, list[int]] = {}
    steps = 0
    t0 = time.perf_counter()
    while s.has_work():
        if steps and steps % args.every == 0 and len(arrived) < args.arrivals:
            rid = f"new{len(arrived)}"
            submit(rid, args.prompt_len, 16)
            arrived[rid] = time.perf_counter()
        s.step()
        steps += 1
        now = time.perf_counter()
        for out in s.drain_outputs():
            for rid, ids in zip(out.rids, out.new_token_ids):
                outputs.setdefault(rid, []).extend(ids)
                if rid.startswith("run") and ids:
                    if rid in last:
                        gaps.append(now - last[rid])
                    last[rid] = now
                elif rid in arrived and ids and rid not in {r for r, _ in ttft}:
                    ttft.append((rid, now - arrived[rid]))
    wall = time.perf_counter() - t0
    s.check_memory()
    gaps.sort()
    n_out = sum(len(v) for v in outputs.values())
    return {"wall_s": wall, "tok_s": n_out / wall, "itl_p50_ms": 1e3 * statistics.median(gaps),
            "itl_p99_ms": 1e3 * gaps[int(0.99 * (len(gaps) - 1))], "itl_max_ms": 1e3 * gaps[-1],
            "ttft_mean_ms": 1e3 * statistics.mean(t for _, t in ttft), "outputs": outputs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=SHIPPED)
    ap.add_argument("--running", type=int, default=16)
    ap.add_argument("--decode-len", type=int, default=160)
    ap.add_argument("--arrivals", type=int, default=16)
    ap.add_argument("--every", type=int, default=8, help="steps between two arrivals")
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=None, help="--chunked-prefill-size")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    label = os.path.basename(args.model) if os.path.isdir(args.model) else args.model
    model = resolve_model(args.model)
    res: dict = {"model": label, **{k: v for k, v in vars(args).items() if k != "model"}}
    outs = {}
    for _ in range(args.rounds):
        for mixed in (False, True):
            r = run(model, mixed, args)
            outs[mixed] = r.pop("outputs")
            res.setdefault("on" if mixed else "off", []).append(r)
            print(f"mixed {'on ' if mixed else 'off'}: " + ", ".join(f"{k} {v:.1f}" for k, v in r.items()), flush=True)
    assert outs[True] == outs[False], "mixed chunks changed the outputs"
    for side in ("on", "off"):
        res[f"{side}_median"] = {k: statistics.median(r[k] for r in res[side]) for k in res[side][0]}
    print("median on/off: " + ", ".join(f"{k} {res['on_median'][k] / res['off_median'][k]:.2f}x"
                                         for k in res["on_median"]))
    write_results("mixed_chunk" + ("" if label in ("sglite-tiny", "shipped") else f"_{label}"), res)


if __name__ == "__main__":
    main()
