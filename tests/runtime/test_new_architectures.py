"""Gemma 3, Phi-3 and Qwen3-MoE, and the yarn/longrope/dynamic RoPE types, against HF
transformers on tiny random fp32 checkpoints: batched prefill, extend over a cached prefix,
decode steps and greedy tokens. Sequences cross the original context of the scaled-RoPE cases.
"""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from model_utils import (  # noqa: E402
    PARITY_SEQS, TinyRunner, hf_logits, run_sglite_forward, tiny_model_cache,
)


ATOL = 1e-4
ORIG = 32  # original context of the scaled-RoPE cases
GEMMA3 = dict(
    layer_types=["sliding_attention", "full_attention"],
    sliding_window=5,
    final_logit_softcapping=30.0,
    query_pre_attn_scalar=24,
    rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
    },
)
LONGROPE = dict(
    rope_type="longrope", rope_theta=10000.0, partial_rotary_factor=0.5,
    short_factor=[1.0, 1.1, 1.3, 1.6], long_factor=[1.5, 2.5, 4.0, 7.0],
)
CASES = {
    "gemma3": ("gemma3", GEMMA3),
    "phi3-window": ("phi3", dict(sliding_window=7)),
    "phi3-longrope-partial": (
        "phi3", dict(rope_parameters=LONGROPE, max_position_embeddings=128, original_max_position_embeddings=ORIG)),
    "qwen3_moe": ("qwen3_moe", dict(moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
                                    norm_topk_prob=True, mlp_only_layers=[1])),
    "qwen3_moe-unnormalized": ("qwen3_moe", dict(moe_intermediate_size=16, num_experts=6, num_experts_per_tok=3,
                                                 norm_topk_prob=False, tie_word_embeddings=True)),
    "mixtral-window": ("mixtral", dict(num_local_experts=4, num_experts_per_tok=2, intermediate_size=48,
                                       sliding_window=9)),
    "llama-yarn": ("llama", dict(max_position_embeddings=128, rope_parameters=dict(
        rope_type="yarn", rope_theta=10000.0, factor=4.0, original_max_position_embeddings=ORIG))),
    "qwen2-dynamic": ("qwen2", dict(max_position_embeddings=ORIG, rope_parameters=dict(
        rope_type="dynamic", rope_theta=10000.0, factor=2.0))),
}
SEQS = PARITY_SEQS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Cached ``case name -> (path, hf_model, sglite_model)``."""
    return tiny_model_cache(tmp_path_factory, CASES, seed_base=31)


def _worst(got, seqs, hf, start=None) -> float:
    start = start or [0] * len(seqs)
    return max((g - hf_logits(hf, s)[p:]).abs().max().item() for g, s, p in zip(got, seqs, start))


@pytest.mark.parametrize("case", list(CASES))
def test_prefill_and_prefix_extend_match_hf(tiny, case):
    _, hf, model = tiny(case)
    diff = _worst(run_sglite_forward(model, SEQS), SEQS, hf)
    assert hf_logits(hf, SEQS[0]).abs().max() > 0.5
    assert diff <= ATOL, (case, diff)
    if case == "qwen2-dynamic":
        return  # see below: cached keys keep their rotation, HF's full forward re-rotates them
    prefix_lens = [5, 0, 40]  # the long request's prefix (40) is itself past ORIG
    diff_prefix = _worst(run_sglite_forward(model, SEQS, prefix_lens=prefix_lens), SEQS, hf, prefix_lens)
    assert diff_prefix <= ATOL, (case, diff_prefix)


# dynamic: HF recomputes every position's rotation at each length, a KV cache keeps the old
# ones, so a cached decode cannot equal a fresh full forward (prefill parity is checked above).
@pytest.mark.parametrize("case", [c for c in CASES if c != "qwen2-dynamic"])
def test_decode_and_greedy_tokens_match_hf(tiny, case):
    _, hf, model = tiny(case)
    runner = TinyRunner(model)
    # Prompts on both sides of ORIG, so longrope decodes with short and with long factors.
    prompts = [SEQS[0][:9], SEQS[2][:36]]
    rows = [runner.new_request() for _ in prompts]
    steps = [[x[-1]] for x in runner.extend(rows, prompts)]
    seqs = [list(p) for p in prompts]
    for _ in range(5):  # greedy: feed back sglite's own argmax
        for s, st in zip(seqs, steps):
            s.append(int(st[-1].argmax()))
        for st, row_logits in zip(steps, runner.decode(rows, [s[-1] for s in seqs])):
            st.append(row_logits)
    worst = 0.0
    for p, s, st in zip(prompts, seqs, steps):
        # One HF forward of the final sequence holds the reference for every step.
        ref = hf_logits(hf, s)[len(p) - 1 :]
        got = torch.stack(st)
        worst = max(worst, (got - ref).abs().max().item())
        # Greedy tokens identical: HF's argmax at each step is the token sglite picked.
        assert ref[:-1].argmax(-1).tolist() == s[len(p) :], case
    assert worst <= ATOL, (case, worst)


def test_longrope_picks_factors_per_request(tiny):
    """The 17-token request uses the short factors, the 70-token one the long ones, in one batch:
    each equals HF run alone, and the two factor sets really differ at the same position."""
    _, hf, model = tiny("phi3-longrope-partial")
    rope = model.model.layers[0].self_attn.rotary_emb
    assert rope.rotary_dim == 8 and rope.long_after == ORIG
    assert not torch.allclose(rope.cos_cache[10], rope.long_cos_cache[10])
    out = run_sglite_forward(model, [SEQS[0], SEQS[2]])
    assert _worst(out, [SEQS[0], SEQS[2]], hf) <= ATOL


def test_model_specific_settings_are_applied(tiny):
    _, _, gemma = tiny("gemma3")
    windows = [layer.self_attn.attn.sliding_window for layer in gemma.model.layers]
    assert windows == [5, None]
    ropes = [layer.self_attn.rotary_emb for layer in gemma.model.layers]
    assert ropes[0].base == 10000.0 and ropes[1].base == 1e6
    assert gemma.model.layers[0].self_attn.attn.scaling == pytest.approx(24**-0.5)
    _, _, moe = tiny("qwen3_moe")
    from sglite_runtime.layers.moe import FusedMoE

    kinds = [type(layer.mlp).__name__ for layer in moe.model.layers]
    assert kinds == ["Qwen3MoeSparseBlock", "LlamaMLP"]
    assert isinstance(moe.model.layers[0].mlp.experts, FusedMoE) and moe.supports_cuda_graph is False


def test_unsupported_settings_are_refused(tmp_path):
    from model_utils import make_tiny_config

    from sglite_runtime.models.gemma3 import Gemma3ForCausalLM

    with pytest.raises(ValueError, match="attn_logit_softcapping"):
        Gemma3ForCausalLM(make_tiny_config("gemma3", **GEMMA3, attn_logit_softcapping=50.0))
    from sglite_runtime.layers.rotary_embedding import get_rope

    with pytest.raises(ValueError, match="unsupported rope_type 'su'"):
        get_rope(16, 64, 10000.0, {"rope_type": "su"})



def test_flashinfer_refused_for_sliding_window_models(tiny):
    import types

    from sglite_runtime.attention import create_attention_backend
    from sglite_runtime.attention.torch_native import TorchNativeAttnBackend

    _, _, gemma = tiny("gemma3")
    runner = types.SimpleNamespace(model=gemma)
    with pytest.raises(ValueError, match="'flashinfer' does not support this model's sliding-window"):
        create_attention_backend("flashinfer", "cuda", runner)
    assert isinstance(create_attention_backend("auto", "cpu", runner), TorchNativeAttnBackend)


@pytest.mark.parametrize("case", ["qwen2-dynamic", "phi3-longrope-partial"])
def test_length_dependent_rope_decode_matches_hf_cached_generation(tiny, case):
    """Decoding across the original context (28 → 40 tokens, ORIG 32) equals HF's own
    incremental forward with a KV cache, where cached keys keep the rotation they got."""
    _, hf, model = tiny(case)
    seq = SEQS[2][:40]
    runner = TinyRunner(model)
    row = runner.new_request()
    ours = [runner.extend([row], [seq[:28]])[0][-1]]
    ours += [runner.decode([row], [seq[t]])[0] for t in range(28, 40)]
    with torch.no_grad():
        out = hf(input_ids=torch.tensor([seq[:28]]), use_cache=True)
        ref = [out.logits[0, -1]]
        for t in range(28, 40):
            cache = getattr(out, "cache", None) or out.past_key_values
            out = hf(input_ids=torch.tensor([[seq[t]]]), cache=cache, use_cache=True, position_ids=torch.tensor([[t]]))
            ref.append(out.logits[0, -1])
    worst = max((a - b).abs().max().item() for a, b in zip(ours, ref))
    assert worst <= ATOL, (case, worst)
