"""bf16 on the CPU against HF transformers in bf16.

Stated tolerance: sglite-bf16's max |logit diff| from HF-bf16 is at most 1.5x HF's own bf16
rounding error (HF-bf16 vs HF-fp32 on the same weights), i.e. sglite adds no error beyond what
bf16 itself costs. Measured (logits up to ~5): Llama/Qwen2/Qwen3/Mistral/Phi-3 0.02-0.035
(HF's own bf16 error 0.03-0.05), Gemma 3 0.08-0.17 (HF's 0.14-0.2). MoE models are left out:
in bf16 a router may pick a different near-tied expert (HF-bf16 vs HF-fp32 flips too), which
moves a logit by ~0.1-1 depending on the seed and the CPU's rounding, not on sglite.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from model_utils import hf_logits, make_tiny_model, run_sglite_forward  # noqa: E402
from test_new_architectures import CASES as NEW_CASES  # noqa: E402

from sglite_runtime.models.loader import load_model  # noqa: E402

CASES = {
    "llama": ("llama", {}),
    "gemma3": NEW_CASES["gemma3"],
    "phi3-longrope-partial": NEW_CASES["phi3-longrope-partial"],
}
SEQS = [[(7 * i + 3) % 256 for i in range(17)], [(13 * i + 1) % 256 for i in range(40)]]


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_matches_hf_bf16(tmp_path, case):
    from transformers import AutoModelForCausalLM

    arch, overrides = CASES[case]
    path, hf32 = make_tiny_model(tmp_path, arch, seed=5, **overrides)
    hf16 = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="eager").eval()
    model, _ = load_model(path, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    out = run_sglite_forward(model, SEQS)
    ref16 = [hf_logits(hf16, s) for s in SEQS]
    ours = max((o - r).abs().max().item() for o, r in zip(out, ref16))
    bf16_noise = max((r - hf_logits(hf32, s)).abs().max().item() for r, s in zip(ref16, SEQS))
    assert bf16_noise > 1e-3  # the reference really ran in bf16
    assert ours <= 1.5 * bf16_noise, (case, ours, bf16_noise)
