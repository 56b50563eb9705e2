"""Hub model ids resolved from a Hugging Face cache built on disk (no network), checkpoints as
they come (bf16/fp16 shards, tied heads) and generation_config.json sampling defaults."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

import sglite
from model_utils import hf_logits, make_tiny_model, make_tiny_model_with_tokenizer, run_sglite_forward
from sglite_runtime.models.loader import load_model
from sglite_runtime.server_args import ServerArgs
from sglite_runtime.utils import hf_utils
from sglite_runtime.utils.hf_utils import resolve_model_path, sampling_defaults

REPO = "sglite-test/tiny-llama"
MAIN_SHA = "a" * 40
V1_SHA = "b" * 40
GEN_CFG = {"do_sample": True, "temperature": 0.0, "top_k": 7, "top_p": 0.9, "repetition_penalty": 1.1,
           "eos_token_id": [0, 4]}


def _add_snapshot(cache: str, repo: str, sha: str, src: str, refs: tuple[str, ...]) -> str:
    """The layout huggingface_hub writes: models--ORG--NAME/{refs/<name>, snapshots/<sha>/...}."""
    root = os.path.join(cache, "models--" + repo.replace("/", "--"))
    snap = os.path.join(root, "snapshots", sha)
    shutil.copytree(src, snap)
    os.makedirs(os.path.join(root, "refs"), exist_ok=True)
    for ref in refs:
        with open(os.path.join(root, "refs", ref), "w") as f:
            f.write(sha)
    return snap


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, tiny_llama_path):
    """A cache holding REPO at main (with sampling defaults) and at tag v1 (different weights)."""
    cache = str(tmp_path_factory.mktemp("hf-cache"))
    main = _add_snapshot(cache, REPO, MAIN_SHA, tiny_llama_path, ("main",))
    with open(os.path.join(main, "generation_config.json"), "w") as f:
        json.dump(GEN_CFG, f)
    other, _ = make_tiny_model_with_tokenizer(tmp_path_factory.mktemp("v1"), "llama", seed=5, std=0.08)
    _add_snapshot(cache, REPO, V1_SHA, other, ("v1",))
    return cache


@pytest.fixture
def offline_cache(hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", hub_cache)  # for spawned children
    monkeypatch.setattr(constants, "HF_HUB_CACHE", hub_cache)  # already imported here
    monkeypatch.setattr(hf_utils, "_resolved", {})
    return hub_cache


def test_hub_id_resolves_from_cache_with_revision(offline_cache):
    main = resolve_model_path(REPO)
    assert main == os.path.join(offline_cache, "models--sglite-test--tiny-llama", "snapshots", MAIN_SHA)
    assert resolve_model_path(REPO, revision="v1").endswith(V1_SHA)
    assert resolve_model_path(REPO, revision=V1_SHA).endswith(V1_SHA)
    a, _ = load_model(REPO)
    b, _ = load_model(REPO, revision="v1")
    assert not torch.equal(a.model.embed_tokens.weight, b.model.embed_tokens.weight)
    assert sampling_defaults(REPO) == {k: GEN_CFG[k] for k in ("temperature", "top_p", "top_k", "repetition_penalty")}


def test_offline_uncached_and_missing_folders_fail_clearly(offline_cache):
    with pytest.raises(ValueError, match=r"'nobody/absent'.*not in the Hugging Face cache.*" + "hf-cache"):
        resolve_model_path("nobody/absent")
    with pytest.raises(ValueError, match="'sglite-test/tiny-llama' at revision 'v9'"):
        resolve_model_path(REPO, revision="v9")
    for bad in ("/no/such/model", "./no-such-model", "../x", "~/x"):
        with pytest.raises(ValueError, match="no such model folder"):
            resolve_model_path(bad)
    with pytest.raises(ValueError, match="neither a local model folder nor a valid Hub model id"):
        resolve_model_path("bad id with spaces")


def test_sampling_defaults_respect_do_sample_false(tmp_path):
    (tmp_path / "generation_config.json").write_text(json.dumps({"do_sample": False, "temperature": 0.6}))
    assert sampling_defaults(str(tmp_path)) == {}
    with pytest.raises(ValueError, match="sampling_defaults"):
        ServerArgs(sampling_defaults="vllm")


def test_engine_serves_hub_id_with_model_sampling_defaults(offline_cache):
    with sglite.Engine(model_path=REPO, max_total_tokens=2048) as engine:
        tm = engine.tokenizer_manager
        ids = engine.tokenizer.encode("Hello there")
        sp = tm.validate(ids, {})
        assert (sp.top_k, sp.top_p, sp.repetition_penalty) == (1, 0.9, 1.1)  # temperature 0 → greedy top_k 1
        assert tm.validate(ids, {"temperature": 0.5, "top_k": None}).top_k == 7
        explicit = tm.validate(ids, {"temperature": 0.5, "top_k": 3, "top_p": 1.0, "repetition_penalty": 1.0})
        assert (explicit.temperature, explicit.top_k, explicit.top_p, explicit.repetition_penalty) == (0.5, 3, 1.0, 1.0)
        # Defaults make an unset request greedy: two runs agree with an explicit greedy one.
        sp_greedy = {"max_new_tokens": 8, "temperature": 0, "repetition_penalty": 1.1, "top_p": 0.9}
        a = engine.generate("Hello there", {"max_new_tokens": 8})
        b = engine.generate("Hello there", {"max_new_tokens": 8})
        assert a["output_ids"] == b["output_ids"] == engine.generate("Hello there", sp_greedy)["output_ids"]


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
def test_half_precision_sharded_tied_checkpoint_loads_into_requested_dtype(tmp_path, stored):
    path, hf = make_tiny_model(tmp_path / "ref", "qwen2", seed=11, tie_word_embeddings=True)
    half = str(tmp_path / "half")
    hf.to(stored).save_pretrained(half, max_shard_size="40KB")
    index = json.load(open(os.path.join(half, "model.safetensors.index.json")))
    assert len(set(index["weight_map"].values())) > 1 and "lm_head.weight" not in index["weight_map"]
    model, _ = load_model(half, dtype="float32")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.lm_head.weight is model.model.embed_tokens.weight
    # The fp32 model holds exactly the rounded weights: compare with HF loading the same files
    # in fp32 (not hf.to(...), which would also round HF's RoPE buffers).
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(half, dtype=torch.float32, attn_implementation="eager").eval()
    seq = [(7 * i + 3) % 256 for i in range(17)]
    diff = (run_sglite_forward(model, [seq])[0] - hf_logits(ref, seq)).abs().max().item()
    assert diff <= 1e-4, diff
    assert load_model(half)[0].dtype == stored  # "auto": the config's dtype


def test_hub_patterns_pick_only_what_serving_needs():
    """The allow/ignore patterns, applied by huggingface_hub itself to a typical repo listing."""
    from huggingface_hub.utils import filter_repo_objects

    repo = ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "chat_template.jinja",
            "consolidated.safetensors", "original/consolidated.00.pth", "original/params.json",
            "onnx/model.safetensors", "pytorch_model.bin", "model.gguf", "README.md", ".gitattributes"]
    picked = set(filter_repo_objects(repo, allow_patterns=hf_utils.HUB_ALLOW_PATTERNS,
                                     ignore_patterns=hf_utils.HUB_IGNORE_PATTERNS))
    assert picked == {"config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                      "model-00002-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
                      "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model", "chat_template.jinja"}
