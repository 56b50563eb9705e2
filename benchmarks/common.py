"""Shared benchmark helpers: seeded workloads, peers, timing, and the results file."""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
SHIPPED = os.path.join(ROOT, "sglite_runtime", "assets", "sglite-tiny")


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()})"


def random_requests(n: int, in_range: tuple[int, int], out_range: tuple[int, int], vocab: int, seed: int = 0):
    """Seeded random-token prompts and output lengths (nano-vllm's workload, scaled down)."""
    rng = random.Random(seed)
    reqs = []
    for _ in range(n):
        prompt = [rng.randrange(10, vocab - 1) for _ in range(rng.randint(*in_range))]
        reqs.append((prompt, rng.randint(*out_range)))
    return reqs


def write_results(name: str, payload: dict[str, Any]) -> str:
    """``results/<name>.json`` (``SGLITE_RESULTS_PREFIX`` prepended to the name, e.g. ``gpu_``)."""
    name = os.environ.get("SGLITE_RESULTS_PREFIX", "") + name
    os.makedirs(RESULTS_DIR, exist_ok=True)
    payload = {"benchmark": name, "device": device_name(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), **payload}
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {path}")
    return path


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def timed(fn, repeats: int = 1) -> tuple[float, Any]:
    """Median wall time of ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return median(times), out


TORCH_DTYPES = ("float32", "bfloat16", "float16")


def load_hf(model_path: str, dtype: str = "float32"):
    """The HF peer on the GPU when there is one; on a CPU with the torch thread count the
    sglite scheduler picks (fair: the benchmarks sweep other counts where it matters)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sglite_runtime.model_executor.model_runner import cpu_threads
    from sglite_runtime.server_args import ServerArgs

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
    if torch.cuda.is_available():
        model = model.to("cuda")
    else:
        torch.set_num_threads(cpu_threads(ServerArgs(model_path=model_path), model.config))
    return model


def sync() -> None:
    """Wait for queued GPU work, so that wall-clock timings mean something on a GPU."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def hf_static_generate(model, reqs, batch_size: int) -> int:
    """HF ``generate`` in static left-padded batches; returns the useful output tokens.

    A static batch runs until its longest request is done, which is the cost being measured.
    """
    import torch

    useful = 0
    for i in range(0, len(reqs), batch_size):
        chunk = reqs[i : i + batch_size]
        width = max(len(p) for p, _ in chunk)
        ids = torch.zeros((len(chunk), width), dtype=torch.int64, device=model.device)
        mask = torch.zeros_like(ids)
        for j, (p, _) in enumerate(chunk):
            ids[j, width - len(p):] = torch.tensor(p, device=model.device)
            mask[j, width - len(p):] = 1
        max_new = max(o for _, o in chunk)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, min_new_tokens=max_new,
                           do_sample=False, pad_token_id=0)
        useful += sum(o for _, o in chunk)
    sync()
    return useful


def hf_continuous_generate(model, reqs) -> int:
    """transformers' continuous batching (paged attention), with per-request output lengths."""
    from transformers import GenerationConfig

    cfg = GenerationConfig(do_sample=False, max_new_tokens=max(o for _, o in reqs), eos_token_id=-1, pad_token_id=0)
    manager = model.init_continuous_batching(generation_config=cfg)
    manager.start()
    try:
        pending = {manager.add_request(p, max_new_tokens=o) for p, o in reqs}
        total = 0
        while pending:
            out = manager.get_result(timeout=600)
            if out is None or out.request_id not in pending:
                continue
            pending.discard(out.request_id)
            total += len(out.generated_tokens)
    finally:
        manager.stop(block=True)
    return total
