"""Test helpers: tiny random HF checkpoints and a minimal pool + ForwardBatch driver.

Import from a test module with::

    sys.path.insert(0, os.path.dirname(__file__))
    from model_utils import make_tiny_model, TinyRunner, run_sglite_forward

* ``make_tiny_model(tmp_path, arch, **overrides)`` saves a seeded random fp32 HF model
  (hidden 64, 2 layers, vocab 256 by default) and returns ``(path, hf_model)``. All weights,
  biases and norm scales are randomized, so bias and norm code paths are really exercised.
* ``TinyRunner(model)`` owns a ReqToTokenPool, a KV allocator and pool and a torch-native
  backend, and runs EXTEND / DECODE forwards for requests it tracks by id.
* ``run_sglite_forward(model, tokens_per_req, prefix_lens=None)`` → per-request logits of
  every (non-prefix) position, the one-shot form of ``TinyRunner``.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from sglite_runtime.attention.torch_native import TorchNativeAttnBackend
from sglite_runtime.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool, TokenToKVPoolAllocator
from sglite_runtime.model_executor.forward_batch import ForwardBatch, ForwardMode

TINY_BASE = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


def _config_class(arch: str):
    from transformers import (
        Gemma3TextConfig,
        LlamaConfig,
        MistralConfig,
        MixtralConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
        Qwen3MoeConfig,
    )

    classes = {
        "llama": LlamaConfig,
        "qwen2": Qwen2Config,
        "qwen3": Qwen3Config,
        "mistral": MistralConfig,
        "gemma3": Gemma3TextConfig,
        "phi3": Phi3Config,
        "qwen3_moe": Qwen3MoeConfig,
        "mixtral": MixtralConfig,
    }
    if arch not in classes:
        raise ValueError(f"arch must be one of {sorted(classes)}")
    return classes[arch]


def make_tiny_config(arch: str = "llama", **overrides: Any):
    """An HF config of the tiny shape above; ``overrides`` win (e.g. ``head_dim=32``)."""
    kwargs = {**TINY_BASE, **overrides}
    if arch in ("qwen3", "qwen3_moe", "gemma3") and "head_dim" not in kwargs:
        # These configs default head_dim to 128/256 rather than hidden/heads.
        kwargs["head_dim"] = kwargs["hidden_size"] // kwargs["num_attention_heads"]
    if arch == "gemma3":
        kwargs.setdefault("query_pre_attn_scalar", kwargs["head_dim"])
    if arch == "phi3":
        # Phi3Config's default special ids (32000) are outside a tiny vocabulary.
        kwargs.setdefault("pad_token_id", 0)
        kwargs.setdefault("eos_token_id", 1)
        kwargs.setdefault("bos_token_id", 1)
    config = _config_class(arch)(**kwargs)
    if arch == "gemma3":
        config.architectures = ["Gemma3ForCausalLM"]  # AutoModel picks it for gemma3_text anyway
    return config


def make_tiny_model(
    tmp_path: str | os.PathLike,
    arch: str = "llama",
    seed: int = 0,
    std: float = 0.08,
    max_shard_size: str | int | None = None,
    **overrides: Any,
):
    """Build, randomize and save a tiny HF causal LM in fp32; returns ``(path, hf_model)``.

    ``max_shard_size`` (e.g. ``"20KB"``) makes ``save_pretrained`` write a sharded index.
    """
    from transformers import AutoModelForCausalLM

    config = make_tiny_config(arch, **overrides)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            # Norm scales near 1, everything else (including biases, zero-init in HF) random.
            p.copy_(1.0 + noise if "norm" in name else noise)
    model.eval()
    path = os.fspath(tmp_path)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
    model.save_pretrained(path, **kwargs)
    return path, model


def make_tiny_model_with_tokenizer(tmp_path: str | os.PathLike, arch: str = "llama", seed: int = 0, **overrides: Any):
    """``make_tiny_model`` with the shipped model's tokenizer (vocabulary 4096) beside it, so
    the scheduler, the Engine and the server can load it; returns ``(path, hf_model)``."""
    import shutil

    from sglite_runtime.server_args import SHIPPED_MODEL_PATH

    overrides.setdefault("vocab_size", 4096)
    overrides.setdefault("max_position_embeddings", 1024)
    path, hf = make_tiny_model(tmp_path, arch, seed=seed, **overrides)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(SHIPPED_MODEL_PATH, name), os.path.join(path, name))
    return path, hf


@torch.no_grad()
def hf_logits(hf_model, tokens: list[int]) -> torch.Tensor:
    """HF's float32 logits ``[len(tokens), vocab]`` for one sequence on its own."""
    ids = torch.tensor([tokens], dtype=torch.int64)
    return hf_model(input_ids=ids).logits[0].float()


class TinyRunner:
    """A minimal stand-in for ModelRunner: pools, a backend, and extend/decode forwards.

    Requests are identified by the ids ``new_request()`` returns; the runner remembers each
    request's token count and slots, so successive ``extend`` calls continue from the prefix
    already in the pool.
    """

    def __init__(self, model, num_slots: int = 2048, max_reqs: int = 8, max_context: int = 512, backend=None):
        self.model = model
        device = next(model.parameters()).device
        self.device = device
        self.req_to_token_pool = ReqToTokenPool(max_reqs, max_context, device=device)
        self.allocator = TokenToKVPoolAllocator(num_slots, page_size=1, device=device)
        self.kv_pool = MHATokenToKVPool(
            num_slots, 1, model.dtype, model.num_kv_heads, model.head_dim, model.num_layers, device=device
        )
        self.backend = backend or TorchNativeAttnBackend()
        self.lens: dict[int, int] = {}

    def new_request(self) -> int:
        row = self.req_to_token_pool.alloc(1)
        assert row is not None, "out of request rows"
        self.lens[row[0]] = 0
        return row[0]

    def _batch(self, mode: ForwardMode, rows: list[int], new_tokens: list[list[int]]) -> ForwardBatch:
        prefix = [self.lens[r] for r in rows]
        ext = [len(t) for t in new_tokens]
        seq = [p + e for p, e in zip(prefix, ext)]
        loc = self.allocator.alloc(sum(ext))
        assert loc is not None, "out of KV slots"
        table, start = self.req_to_token_pool.req_to_token, 0
        for r, p, s in zip(rows, prefix, seq):
            table[r, p:s] = loc[start : start + s - p].to(torch.int32)
            start += s - p
        for r, s in zip(rows, seq):
            self.lens[r] = s
        dev = self.device
        i64 = dict(dtype=torch.int64, device=dev)
        fb = ForwardBatch(
            forward_mode=mode,
            batch_size=len(rows),
            input_ids=torch.tensor([t for ts in new_tokens for t in ts], **i64),
            positions=torch.cat([torch.arange(p, s, **i64) for p, s in zip(prefix, seq)]),
            out_cache_loc=loc.to(dev),
            req_pool_indices=torch.tensor(rows, **i64),
            seq_lens=torch.tensor(seq, **i64),
            seq_lens_cpu=seq,
            req_to_token_pool=self.req_to_token_pool,
            token_to_kv_pool=self.kv_pool,
            attn_backend=self.backend,
        )
        if mode.is_extend():
            fb.extend_prefix_lens = torch.tensor(prefix, **i64)
            fb.extend_seq_lens = torch.tensor(ext, **i64)
            fb.extend_start_loc = torch.cumsum(fb.extend_seq_lens, 0) - fb.extend_seq_lens
            fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu = prefix, ext
        return fb

    @torch.no_grad()
    def extend(self, rows: list[int], new_tokens: list[list[int]]) -> list[torch.Tensor]:
        """One EXTEND forward; returns each request's logits ``[len(new), vocab]``."""
        fb = self._batch(ForwardMode.EXTEND, rows, new_tokens)
        self.backend.init_forward_metadata(fb)
        hidden = self.model(fb.input_ids, fb.positions, fb)
        logits = self.model.compute_logits(hidden)
        return list(logits.split(fb.extend_seq_lens_cpu))

    @torch.no_grad()
    def decode(self, rows: list[int], tokens: list[int]) -> torch.Tensor:
        """One DECODE forward (one new token per request); returns logits ``[bs, vocab]``."""
        fb = self._batch(ForwardMode.DECODE, rows, [[t] for t in tokens])
        self.backend.init_forward_metadata(fb)
        hidden = self.model(fb.input_ids, fb.positions, fb)
        return self.model.compute_logits(hidden)


def run_sglite_forward(
    model, tokens_per_req: list[list[int]], prefix_lens: list[int] | None = None
) -> list[torch.Tensor]:
    """Extend a batch of requests; returns each request's logits for positions ``prefix..len``.

    With ``prefix_lens``, the first ``prefix_lens[i]`` tokens of request ``i`` are put into
    the pool by a first extend, and the returned logits come from a second extend that reuses
    them (prefix 0 requests take part only in the second).
    """
    runner = TinyRunner(model)
    rows = [runner.new_request() for _ in tokens_per_req]
    prefix_lens = prefix_lens or [0] * len(tokens_per_req)
    first = [(r, t[:p]) for r, t, p in zip(rows, tokens_per_req, prefix_lens) if p > 0]
    if first:
        runner.extend([r for r, _ in first], [t for _, t in first])
    return runner.extend(rows, [t[p:] for t, p in zip(tokens_per_req, prefix_lens)])


# Three requests of different lengths for parity tests; the 70-token one crosses the original
# context of the RoPE-scaling cases (64), so long factors and scaled bases are exercised.
PARITY_SEQS = [
    [(7 * i + 3) % 256 for i in range(17)],
    [5, 9, 200, 31],
    [(13 * i + 1) % 256 for i in range(70)],
]


def tiny_model_cache(tmp_path_factory: Any, cases: dict[str, tuple[str, dict]], seed_base: int):
    """``get(case name) -> (path, hf_model, sglite_model)``, each built once (seeds in build order)."""
    from sglite_runtime.models.loader import load_model

    cache: dict[str, tuple] = {}

    def get(name: str) -> tuple:
        if name not in cache:
            arch, overrides = cases[name]
            path, hf = make_tiny_model(tmp_path_factory.mktemp(name), arch, seed=len(cache) + seed_base, **overrides)
            cache[name] = (path, hf, load_model(path)[0])
        return cache[name]

    return get
