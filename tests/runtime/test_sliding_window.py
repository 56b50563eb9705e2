"""Sliding-window attention against HF: Mistral and Qwen2 (``use_sliding_window``) with windows
far shorter than the sequences, on the torch-native and Triton backends, through one-shot
prefill, a cached prefix longer than the window (radix-cache reuse), chunked prefill and decode.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from model_utils import TinyRunner, hf_logits, make_tiny_model  # noqa: E402

from sglite_runtime.models.loader import load_model  # noqa: E402

ATOL = 1e-4
WINDOW = 6
CASES = {
    "mistral": ("mistral", dict(sliding_window=WINDOW)),
    # Layer 0 full, layer 1 sliding: HF's max_window_layers split.
    "qwen2": ("qwen2", dict(use_sliding_window=True, sliding_window=WINDOW, max_window_layers=1)),
}
SEQ = [(11 * i + 5) % 256 for i in range(29)]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            arch, overrides = CASES[name]
            path, hf = make_tiny_model(tmp_path_factory.mktemp(name), arch, seed=21, **overrides)
            # Triton runs natively on a GPU (interpreted on the CPU otherwise).
            on_gpu = load_model(path, device="cuda")[0] if torch.cuda.is_available() else None
            cache[name] = (hf, load_model(path)[0], on_gpu)
        return cache[name]

    return get


def _backend(name: str):
    if name == "torch_native":
        return None
    pytest.importorskip("triton")
    from sglite_runtime.attention.triton_backend import TritonAttnBackend

    return TritonAttnBackend(num_kv_splits=2)


def _chunks(runner: TinyRunner, row: int, seq: list[int], sizes: list[int]) -> torch.Tensor:
    out, pos = [], 0
    for n in sizes:
        out.append(runner.extend([row], [seq[pos : pos + n]])[0])
        pos += n
    return torch.cat(out)


@pytest.mark.parametrize("backend", ["torch_native", "triton"])
@pytest.mark.parametrize("case", list(CASES))
def test_sliding_window_matches_hf(models, case, backend):
    hf, model, gpu_model = models(case)
    if backend == "triton" and gpu_model is not None:
        model = gpu_model
    ref = hf_logits(hf, SEQ).to(next(model.parameters()).device)
    # The window matters: the same weights with a window longer than the sequence differ.
    hf.config.sliding_window = 10**6
    full = hf_logits(hf, SEQ).to(ref.device)
    hf.config.sliding_window = WINDOW
    assert (full - ref).abs().max() > 1e-2

    runner = TinyRunner(model, backend=_backend(backend))
    diffs = {}
    # One-shot prefill.
    diffs["prefill"] = (runner.extend([runner.new_request()], [SEQ])[0] - ref).abs().max().item()
    # A cached prefix (20 tokens, > window) then the rest; chunked prefill in 5/9/7/8-token chunks.
    diffs["prefix"] = (_chunks(runner, runner.new_request(), SEQ, [20, 9])[20:] - ref[20:]).abs().max().item()
    diffs["chunked"] = (_chunks(runner, runner.new_request(), SEQ, [5, 9, 7, 8]) - ref).abs().max().item()
    # Decode past the window: prompt of 4, then one token per step up to twice the window.
    row = runner.new_request()
    runner.extend([row], [SEQ[:4]])
    diffs["decode"] = max(
        (runner.decode([row], [SEQ[t]])[0] - ref[t]).abs().max().item() for t in range(4, 2 * WINDOW + 2)
    )
    assert max(diffs.values()) <= ATOL, diffs


def test_batched_decode_mixed_lengths_with_window(models):
    """Requests shorter and longer than the window in one decode batch (torch-native groups)."""
    hf, model, _ = models("mistral")
    seqs = [SEQ[:3], SEQ[:25], SEQ[5:17]]
    refs = [hf_logits(hf, s + [7]) for s in seqs]
    runner = TinyRunner(model)
    rows = [runner.new_request() for _ in seqs]
    runner.extend(rows, seqs)
    logits = runner.decode(rows, [7, 7, 7])
    worst = max((logits[i] - refs[i][-1]).abs().max().item() for i in range(3))
    assert worst <= ATOL


def test_scheduler_gemma3_chunked_prefill_and_radix_reuse_match_hf(tmp_path):
    """Through the scheduler: a Gemma 3 model (window 8) with 16-token prefill chunks, then the
    same prompt again served from the radix cache (a cached prefix longer than the window)."""
    from model_utils import make_tiny_model_with_tokenizer
    from scheduler_utils import make_scheduler, run_to_completion, submit
    from test_new_architectures import GEMMA3

    path, hf = make_tiny_model_with_tokenizer(tmp_path, "gemma3", seed=4, **{**GEMMA3, "sliding_window": 8})
    prompt = list(range(40, 85))  # 45 tokens: three chunks, far past the window
    expected = list(prompt)
    for _ in range(10):
        expected.append(int(hf_logits(hf, expected)[-1].argmax()))
    sp = {"max_new_tokens": 10, "temperature": 0, "ignore_eos": True}
    sched = make_scheduler(path, chunked_prefill_size=16, max_total_tokens=2048)
    submit(sched, "a", prompt, sp)
    first = run_to_completion(sched)["a"]
    assert first.output_ids == expected[len(prompt):]
    submit(sched, "b", prompt + first.output_ids[:3], sp)
    again = run_to_completion(sched)["b"]
    assert again.cached_tokens >= len(prompt)
    assert again.output_ids[:7] == expected[len(prompt) + 3:]
