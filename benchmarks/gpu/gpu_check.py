"""The GPU path in one call: tests, backends, CUDA graphs, bf16 benchmarks, roofline.

Run through ``run_gpu_check.sh`` (it installs the carried wheels first). Each part runs in a
subprocess with its own time limit, so one part that hangs or fails does not stop the rest;
every part's result (or its error and output tail) goes to ``benchmarks/results/gpu_check.json``
as soon as it ends, and the benchmarks write ``benchmarks/results/gpu_*.json``.

Parts, in this order (about 6-7 minutes on an H200; ``--budget-s``, 470 by default, cuts the
last ones short and records them as skipped):
  env        torch/triton/transformers versions, the GPU, measured copy bandwidth
  tests      the kernel tests (gpu-marked included) and the CUDA-only tests, run natively
  latency    bench_latency on the 1B-shaped model in bf16: sglite vs bare loop vs HF generate;
             batch-1 decode time vs the memory-bandwidth roofline (weights / bandwidth)
  graphs     batch-1 TPOT and outputs with CUDA graphs on and off (1B-shaped model, bf16)
  backends   native Triton vs torch-native attention: greedy outputs and batch-1 TPOT
  offline    bench_offline on the 1B-shaped model in bf16 vs HF static (swept) and generate_batch
  flashinfer the FlashInfer backend, if it imports and builds (JIT) within its limit

``--dry-run`` runs every part on the CPU with tiny shapes and short limits (the GPU-only
parts check what they can: the test collection, the FlashInfer import), to prove the script.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BENCH = os.path.dirname(HERE)
sys.path.insert(0, BENCH)

from common import RESULTS_DIR  # noqa: E402
from model_zoo import SHIPPED, param_count, resolve_model  # noqa: E402

PY = sys.executable
# A dry run's per-part limit: generous, since a shared CPU can take a minute to start an engine.
DRY_LIMIT = 240


class Check:
    def __init__(self, dry_run: bool):
        self.dry = dry_run
        self.out: dict[str, Any] = {"dry_run": dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "parts": {}}
        self.path = os.path.join(RESULTS_DIR, "gpu_check_dry_run.json" if dry_run else "gpu_check.json")
        self.t0 = time.monotonic()

    def save(self) -> None:
        os.makedirs(RESULTS_DIR, exist_ok=True)
        self.out["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        with open(self.path, "w") as f:
            json.dump(self.out, f, indent=2)

    def part(self, name: str, fn: Callable[[], Any]) -> None:
        t = time.monotonic()
        print(f"== {name} (t={t - self.t0:.0f}s)", flush=True)
        try:
            res = fn()
            status = "ok"
        except Exception as e:  # noqa: BLE001 - recorded, and the next part still runs
            res, status = {"error": repr(e)[-2000:]}, "failed"
        self.out["parts"][name] = {"status": status, "seconds": round(time.monotonic() - t, 1), **(res or {})}
        print(json.dumps(self.out["parts"][name], indent=1, default=str)[:3000], flush=True)
        self.save()


DEADLINE = [float("inf")]  # monotonic time by which the whole check must end (--budget-s)


def run(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """A subprocess with a time limit (cut to what is left of the budget); exit code and output tail."""
    t = time.monotonic()
    timeout = min(timeout, DEADLINE[0] - t)
    if timeout < 10:
        raise RuntimeError("skipped: the time budget is spent")
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **(env or {})})
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        text = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
    tail = [ln for ln in text.splitlines() if "Warning" not in ln and "it/s]" not in ln][-25:]
    return {"rc": rc, "wall_s": round(time.monotonic() - t, 1), "tail": tail}


def read_result(name: str) -> dict:
    with open(os.path.join(RESULTS_DIR, f"{name}.json")) as f:
        return json.load(f)


# ---- parts -------------------------------------------------------------------------------------
def part_env(dry: bool) -> dict:
    import torch
    import transformers

    res: dict[str, Any] = {"torch": torch.__version__, "transformers": transformers.__version__,
                           "python": sys.version.split()[0], "cuda": torch.cuda.is_available()}
    try:
        import triton

        res["triton"] = triton.__version__
    except Exception as e:  # noqa: BLE001
        res["triton"] = repr(e)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev == "cuda":
        res["gpu"] = torch.cuda.get_device_name(0)
        res["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    res["copy_bandwidth_gb_s"] = copy_bandwidth(dev, 1 << 28 if dev == "cuda" else 1 << 24)
    return res


def copy_bandwidth(dev: str, nbytes: int) -> float:
    """Bytes read + written per second by a large device-to-device copy (the roofline's bound)."""
    import torch

    a = torch.empty(nbytes, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    if dev == "cuda":
        torch.cuda.synchronize()
    reps = 20 if dev == "cuda" else 5
    t = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    if dev == "cuda":
        torch.cuda.synchronize()
    return round(2 * nbytes * reps / (time.perf_counter() - t) / 1e9, 1)


def part_tests(dry: bool) -> dict:
    """The gpu-marked tests and the CUDA-only ones that skip on a CPU (graph runner, sampler noise):
    on a GPU the whole kernels folder runs natively, which takes seconds."""
    targets = ["tests/kernels", "tests/runtime/test_sampler.py"]
    cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *targets]
    if dry:
        # On a CPU the kernels run interpreted: collecting the gpu-marked tests proves the wiring.
        cmd += ["-m", "gpu", "--collect-only"]
    return run(cmd, DRY_LIMIT if dry else 150)


ENGINE_SNIPPET = r"""
import json, sys, time
sys.path.insert(0, {bench!r})
import sglite
from common import random_requests
cfg = json.loads(sys.argv[1])
prompts = [p for p, _ in random_requests(cfg["n"], (16, 64), (1, 1), cfg["vocab"], seed=0)]
sp = {{"max_new_tokens": cfg["out"], "temperature": 0, "ignore_eos": True}}
with sglite.Engine(model_path=cfg["model"], dtype=cfg["dtype"], max_total_tokens=32768, **cfg["engine"]) as e:
    outs = [o["output_ids"] for o in e.generate(input_ids=prompts, sampling_params=sp)]
    e.generate(input_ids=prompts[0], sampling_params={{**sp, "max_new_tokens": 8}})
    stamps = []
    t0 = time.perf_counter()
    for ch in e.generate(input_ids=prompts[0], sampling_params={{**sp, "max_new_tokens": cfg["tpot_tokens"]}},
                         stream=True):
        stamps.extend([time.perf_counter()] * max(len(ch["output_ids"]), 1))
print("RESULT" + json.dumps({{"outputs": outs, "ttft_ms": (stamps[0] - t0) * 1e3,
                             "tpot_ms": (stamps[-1] - stamps[0]) / (len(stamps) - 1) * 1e3}}))
"""


def engine_run(model: str, dtype: str, engine: dict, timeout: float, n: int = 8, out: int = 32,
               tpot_tokens: int = 128) -> dict:
    from transformers import AutoConfig

    cfg = {"model": model, "dtype": dtype, "engine": engine, "n": n, "out": out, "tpot_tokens": tpot_tokens,
           "vocab": AutoConfig.from_pretrained(model).vocab_size}
    r = run([PY, "-c", ENGINE_SNIPPET.format(bench=BENCH), json.dumps(cfg)], timeout)
    for line in r["tail"]:
        if line.startswith("RESULT"):
            return {**json.loads(line[6:]), "wall_s": r["wall_s"]}
    raise RuntimeError(f"engine run failed (rc {r['rc']}): " + " | ".join(r["tail"][-8:]))


def compare(a: dict, b: dict, name_a: str, name_b: str) -> dict:
    """Exact match count and the mean fraction of each output's tokens agreeing before they first differ."""
    same = sum(x == y for x, y in zip(a["outputs"], b["outputs"]))
    prefix = []
    for x, y in zip(a["outputs"], b["outputs"]):
        k = next((i for i, (u, v) in enumerate(zip(x, y)) if u != v), min(len(x), len(y)))
        prefix.append(k / max(len(x), 1))
    return {f"{name_a}_tpot_ms": a["tpot_ms"], f"{name_b}_tpot_ms": b["tpot_ms"],
            f"{name_a}_ttft_ms": a["ttft_ms"], f"{name_b}_ttft_ms": b["ttft_ms"],
            "outputs_identical": f"{same}/{len(a['outputs'])}",
            "mean_agreeing_prefix": round(sum(prefix) / max(len(prefix), 1), 3)}


def part_backends(dry: bool, big: str, dtype: str) -> dict:
    """Triton vs torch-native on the shipped model (fp32: outputs should agree) and on the big one."""
    other = "torch_native" if dry else "triton"  # the CPU has no native Triton
    res = {}
    for label, model, dt in (("shipped_fp32", SHIPPED, "float32"), ("big_" + dtype, big, dtype)):
        a = engine_run(model, dt, {"attention_backend": other, "disable_cuda_graph": True}, DRY_LIMIT if dry else 100,
                       tpot_tokens=16 if dry else 128)
        b = engine_run(model, dt, {"attention_backend": "torch_native", "disable_cuda_graph": True},
                       DRY_LIMIT if dry else 100, tpot_tokens=16 if dry else 128)
        res[label] = compare(a, b, other if not dry else "torch_native_a", "torch_native")
    return res


def part_flashinfer(dry: bool, big: str, dtype: str) -> dict:
    r = run([PY, "-c", "import flashinfer, sys; print('RESULT', flashinfer.__version__)"], 60)
    version = next((ln.split()[1] for ln in r["tail"] if ln.startswith("RESULT")), None)
    if version is None:
        return {"available": False, "import": r["tail"][-3:]}
    if dry:
        return {"available": True, "version": version, "note": "dry run: not run on a CPU"}
    # The first run JIT-compiles its kernels: a generous limit, then the comparison with Triton.
    fi = engine_run(big, dtype, {"attention_backend": "flashinfer"}, 200)
    tr = engine_run(big, dtype, {"attention_backend": "triton"}, 100)
    return {"available": True, "version": version, **compare(fi, tr, "flashinfer", "triton")}


def part_graphs(dry: bool, big: str, dtype: str) -> dict:
    engine = {} if dry else {"attention_backend": "triton"}
    on = engine_run(big, dtype, {**engine, "disable_cuda_graph": False}, DRY_LIMIT if dry else 120,
                    tpot_tokens=16 if dry else 128)
    off = engine_run(big, dtype, {**engine, "disable_cuda_graph": True}, DRY_LIMIT if dry else 100,
                     tpot_tokens=16 if dry else 128)
    res = compare(on, off, "graphs_on", "graphs_off")
    res["speedup_graphs"] = round(off["tpot_ms"] / on["tpot_ms"], 3)
    return res


def part_latency(dry: bool, big: str, dtype: str, bandwidth_gb_s: float | None) -> dict:
    out_len = 32 if dry else 128
    r = run([PY, "benchmarks/bench_latency.py", "--model", big, "--dtype", dtype, "--output-len", str(out_len),
             "--repeats", "1" if dry else "3", "--out", "gpu_latency" + ("_dry_run" if dry else "")],
            2 * DRY_LIMIT if dry else 150)
    if r["rc"] != 0:
        raise RuntimeError(f"bench_latency rc {r['rc']}: " + " | ".join(r["tail"][-8:]))
    res = read_result("gpu_latency" + ("_dry_run" if dry else ""))
    # Roofline: a batch-1 decode step reads every weight once (the KV read is small at these lengths).
    weight_bytes = param_count(big) * (2 if dtype in ("bfloat16", "float16") else 4)
    if bandwidth_gb_s:
        # The measured copy rate (bytes read + written per second) is what the memory delivers.
        roofline_ms = weight_bytes / (bandwidth_gb_s * 1e9) * 1e3
        res["roofline_ms"] = roofline_ms
        res["fraction_of_roofline"] = roofline_ms / res["sglite_tpot_ms"]
        res["bare_loop_fraction_of_roofline"] = roofline_ms / res["bare_loop_tpot_ms"]
        res["roofline_target"] = ">= 0.85 on the 1B-shaped model (GPU)"
    res["weight_bytes"] = weight_bytes
    return res


def part_offline(dry: bool, big: str, dtype: str) -> dict:
    name = "gpu_offline" + ("_dry_run" if dry else "")
    cmd = [PY, "benchmarks/bench_offline.py", "--model", big, "--dtype", dtype, "--out", name]
    cmd += ["--quick", "--hf-batch-sizes", "4", "8"] if dry else ["--hf-batch-sizes", "16", "32", "64"]
    r = run(cmd, 2 * DRY_LIMIT if dry else 170)
    if r["rc"] != 0:
        raise RuntimeError(f"bench_offline rc {r['rc']}: " + " | ".join(r["tail"][-8:]))
    res = read_result(name)
    res["target"] = ">= 5x generate_batch (GPU)"
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, short limits")
    ap.add_argument("--parts", nargs="+", default=None,
                    help="subset of: env tests latency graphs backends offline flashinfer (in this order)")
    ap.add_argument("--budget-s", type=float, default=470,
                    help="the whole check ends within this (parts past it are skipped and recorded)")
    args = ap.parse_args()
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA device: run with --dry-run on a CPU")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    chk = Check(args.dry_run)
    if not args.dry_run:
        DEADLINE[0] = time.monotonic() + args.budget_s
    dtype = "float32" if args.dry_run else "bfloat16"
    # Most telling first: if the budget runs out, what is skipped matters least.
    order = ["env", "tests", "latency", "graphs", "backends", "offline", "flashinfer"]
    parts = [p for p in order if p in (args.parts or order)]

    t = time.monotonic()
    big = resolve_model("micro" if args.dry_run else "1b", device="cpu" if args.dry_run else "cuda", dtype=dtype)
    chk.out["model"] = {"path": big, "params": param_count(big), "dtype": dtype,
                        "build_or_find_s": round(time.monotonic() - t, 1)}
    chk.save()
    if "env" in parts:
        chk.part("env", lambda: part_env(args.dry_run))
    bw = chk.out["parts"].get("env", {}).get("copy_bandwidth_gb_s")
    table = {
        "tests": lambda: part_tests(args.dry_run),
        "backends": lambda: part_backends(args.dry_run, big, dtype),
        "flashinfer": lambda: part_flashinfer(args.dry_run, big, dtype),
        "graphs": lambda: part_graphs(args.dry_run, big, dtype),
        "latency": lambda: part_latency(args.dry_run, big, dtype, bw),
        "offline": lambda: part_offline(args.dry_run, big, dtype),
    }
    for name in parts:
        if name in table:
            chk.part(name, table[name])
    failed = [n for n, p in chk.out["parts"].items() if p["status"] != "ok"]
    chk.out["failed_parts"] = failed
    chk.save()
    print(f"wrote {chk.path} in {chk.out['elapsed_s']} s; failed parts: {failed or 'none'}")


if __name__ == "__main__":
    main()
