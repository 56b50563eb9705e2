"""The sglite model layer against HF transformers: fp32 logits on tiny random checkpoints."""

from __future__ import annotations

import json
import math
import os
import sys
import types

import pytest
import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(__file__))
from model_utils import (  # noqa: E402
    PARITY_SEQS, TinyRunner, hf_logits, make_tiny_model, run_sglite_forward, tiny_model_cache,
)

from sglite_runtime.layers.rotary_embedding import get_rope, rope_config_from_hf  # noqa: E402
from sglite_runtime.models.loader import load_model  # noqa: E402
from sglite_runtime.models.registry import get_model_class  # noqa: E402

ATOL = 1e-4
LLAMA3_ROPE = dict(
    rope_type="llama3",
    rope_theta=500000.0,
    factor=8.0,
    low_freq_factor=1.0,
    high_freq_factor=4.0,
    original_max_position_embeddings=64,
)
CASES = {
    "llama": ("llama", {}),
    "llama-mqa-tied": ("llama", dict(num_key_value_heads=1, tie_word_embeddings=True)),
    "llama-bias-headdim": ("llama", dict(attention_bias=True, mlp_bias=True, head_dim=32)),
    "llama-llama3-rope": ("llama", dict(rope_parameters=LLAMA3_ROPE, num_key_value_heads=4)),
    "qwen2": ("qwen2", {}),
    "qwen2-tied-mqa": ("qwen2", dict(tie_word_embeddings=True, num_key_value_heads=1)),
    "qwen3": ("qwen3", {}),
    "qwen3-bias-headdim-tied": ("qwen3", dict(attention_bias=True, head_dim=32, tie_word_embeddings=True)),
    "mistral": ("mistral", dict(num_key_value_heads=1)),
}
SEQS = PARITY_SEQS


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Cached ``case name -> (path, hf_model, sglite_model)``."""
    return tiny_model_cache(tmp_path_factory, CASES, seed_base=1)


def _max_diff(got: list[torch.Tensor], seqs: list[list[int]], hf, start: list[int] | None = None) -> float:
    start = start or [0] * len(seqs)
    return max((g - hf_logits(hf, s)[p:]).abs().max().item() for g, s, p in zip(got, seqs, start))


@pytest.mark.parametrize("case", list(CASES))
def test_batched_extend_matches_hf(tiny, case):
    _, hf, model = tiny(case)
    out = run_sglite_forward(model, SEQS)
    assert [o.shape for o in out] == [(len(s), 256) for s in SEQS]
    assert all(o.dtype == torch.float32 for o in out)
    diff = _max_diff(out, SEQS, hf)
    # Logits are O(1) here, so the bound is a real check, not vacuous.
    assert hf_logits(hf, SEQS[0]).abs().max() > 0.5
    assert diff <= ATOL, f"{case}: max |logit diff| {diff:.2e}"


@pytest.mark.parametrize("case", ["llama-bias-headdim", "qwen3", "llama-llama3-rope"])
def test_extend_from_cached_prefix_matches_full_prefill(tiny, case):
    _, hf, model = tiny(case)
    seq = SEQS[0]
    full = run_sglite_forward(model, [seq])[0]
    for split in (1, 5, len(seq) - 1):
        part = run_sglite_forward(model, [seq], prefix_lens=[split])[0]
        assert torch.allclose(part, full[split:], atol=1e-5), (split, (part - full[split:]).abs().max())
    # Mixed prefixes within one batch, including a request with no prefix.
    prefix_lens = [5, 0, 64]
    out = run_sglite_forward(model, SEQS, prefix_lens=prefix_lens)
    assert _max_diff(out, SEQS, hf, prefix_lens) <= ATOL


@pytest.mark.parametrize("case", ["llama-mqa-tied", "qwen3-bias-headdim-tied", "mistral"])
def test_decode_steps_match_hf(tiny, case):
    _, hf, model = tiny(case)
    runner = TinyRunner(model)
    seqs = [SEQS[0][:12], SEQS[2][:30]]
    rows = [runner.new_request(), runner.new_request()]
    prompt = [s[:6] for s in seqs]
    runner.extend(rows, prompt)
    # Feed the rest one token per step; step t's logits are for position 6 + t.
    worst = 0.0
    ref = [hf_logits(hf, s) for s in seqs]
    for t in range(6):
        logits = runner.decode(rows, [s[6 + t] for s in seqs])
        for i in range(2):
            worst = max(worst, (logits[i] - ref[i][6 + t]).abs().max().item())
    assert worst <= ATOL, f"{case}: decode max diff {worst:.2e}"


def test_sharded_checkpoint_gives_identical_logits(tmp_path):
    single, _ = make_tiny_model(tmp_path / "single", "qwen2", seed=7)
    sharded, _ = make_tiny_model(tmp_path / "sharded", "qwen2", seed=7, max_shard_size="40KB")
    index = json.load(open(os.path.join(sharded, "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 1
    a = run_sglite_forward(load_model(single)[0], SEQS[:2])
    b = run_sglite_forward(load_model(sharded)[0], SEQS[:2])
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_loader_reports_missing_and_unexpected(tmp_path):
    path, _ = make_tiny_model(tmp_path / "m", "llama", seed=3)
    file = os.path.join(path, "model.safetensors")
    tensors = load_file(file)
    dropped = dict(tensors)
    del dropped["model.layers.1.self_attn.k_proj.weight"]
    save_file(dropped, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing.*qkv_proj.weight\[k\]"):
        load_model(path)
    extra = dict(tensors, **{"model.layers.0.self_attn.bogus.weight": torch.zeros(2)})
    save_file(extra, file, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="bogus"):
        load_model(path)


def test_dtype_override_and_model_attrs(tiny):
    path, _, _ = tiny("qwen3")
    model, cfg = load_model(path, dtype="bfloat16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert (model.num_layers, model.num_kv_heads, model.head_dim) == (2, 2, 16)
    logits = run_sglite_forward(model, [SEQS[1]])[0]
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_registry_rejects_unknown_architecture():
    cfg = types.SimpleNamespace(architectures=["GPT2LMHeadModel"])
    with pytest.raises(ValueError, match="LlamaForCausalLM.*Qwen3ForCausalLM"):
        get_model_class(cfg)


def test_rope_config_new_and_legacy_forms():
    new = types.SimpleNamespace(rope_parameters=dict(LLAMA3_ROPE))
    legacy = types.SimpleNamespace(
        rope_theta=500000.0, rope_scaling={k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
    )
    assert rope_config_from_hf(new) == rope_config_from_hf(legacy)
    assert rope_config_from_hf(types.SimpleNamespace(rope_theta=1e6, rope_scaling=None)) == (1e6, None)
    plain = types.SimpleNamespace(rope_parameters={"rope_theta": 10000.0, "rope_type": "default"})
    assert rope_config_from_hf(plain) == (10000.0, None)
    # Gemma 3: per layer type in transformers 5, rope_local_base_freq for local layers in 4.x.
    linear = {"rope_type": "linear", "factor": 8.0}
    v5 = types.SimpleNamespace(rope_parameters={
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        "full_attention": {**linear, "rope_theta": 1e6}})
    v4 = types.SimpleNamespace(rope_theta=1e6, rope_local_base_freq=10000.0, rope_scaling=dict(linear))
    for cfg in (v5, v4):
        assert rope_config_from_hf(cfg, "sliding_attention") == (10000.0, None)
        assert rope_config_from_hf(cfg, "full_attention") == (1e6, linear)


def test_llama3_inv_freq_matches_hf():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    cfg = LlamaConfig(hidden_size=256, num_attention_heads=2, rope_parameters=dict(LLAMA3_ROPE))
    hf_inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg)
    theta, scaling = rope_config_from_hf(cfg)
    rope = get_rope(128, 256, theta, scaling)
    pos = torch.arange(256, dtype=torch.float32)[:, None] * hf_inv_freq[None, :]
    assert torch.equal(rope.cos_cache, torch.cat((pos, pos), -1).cos())
    assert not math.isclose(hf_inv_freq[-1].item(), 1 / 500000.0 ** (126 / 128))  # scaling did something
