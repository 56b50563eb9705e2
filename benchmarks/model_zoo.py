"""Random benchmark models built on the fly (seeded, cached on disk, never committed).

``resolve_model(name)`` accepts a folder or one of:

* ``shipped``: the trained tiny model in ``sglite_runtime/assets/sglite-tiny`` (~2M parameters);
* ``mid``: a Llama-shaped random model of ~40M parameters with a 32k vocabulary, so that model
  compute, not Python, dominates a CPU step;
* ``1b``: Llama-3.2-1B's layer shape (hidden 2048, 16 layers, GQA 32/8) with a 32k vocabulary,
  ~1.0B parameters, for the GPU check (bf16).

The tokenizer is the shipped byte-level BPE extended to 32k entries: every added entry is the
concatenation of two existing ones plus the merge that forms it, so it is a valid BPE whose
every id decodes to text (random ids sampled by the engine detokenize like real ones).
Models go to ``$SGLITE_BENCH_CACHE`` (default ``~/.cache/sglite/bench-models``).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil

logger = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "sglite_runtime", "assets", "sglite-tiny")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

SHAPES: dict[str, dict] = {
    "mid": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=True),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096, tie_word_embeddings=True),
    # Only for dry runs of the scripts that use the shapes above.
    "micro": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=8192, max_position_embeddings=1024, tie_word_embeddings=True),
}


def cache_dir() -> str:
    return os.environ.get("SGLITE_BENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sglite",
                                                                "bench-models")


def resolve_model(name: str, seed: int = 0, device: str = "cpu", dtype: str = "float32") -> str:
    """A model folder for ``name`` (a path, ``shipped``, ``mid``, ``1b`` or ``micro``)."""
    if name == "shipped":
        return SHIPPED
    if name not in SHAPES:
        return name
    path = os.path.join(cache_dir(), f"{name}-llama-seed{seed}-{dtype}")
    if not os.path.exists(os.path.join(path, "DONE")):
        build_model(path, SHAPES[name], seed, device, dtype)
    return path


def extended_tokenizer(vocab_size: int, seed: int = 0) -> dict:
    """The shipped tokenizer.json grown to ``vocab_size`` entries by seeded merges."""
    with open(os.path.join(SHIPPED, "tokenizer.json")) as f:
        tok = json.load(f)
    vocab: dict[str, int] = tok["model"]["vocab"]
    merges: list = tok["model"]["merges"]
    specials = {a["content"] for a in tok["added_tokens"]}
    # Pieces without a leading space on the right keep the new entries reachable by the encoder.
    left = [t for t in vocab if t not in specials]
    right = [t for t in left if not t.startswith("Ġ")]
    rng = random.Random(seed)
    while len(vocab) < vocab_size:
        a, b = rng.choice(left), rng.choice(right)
        if a + b in vocab or len(a + b) > 24:
            continue
        vocab[a + b] = len(vocab)
        merges.append([a, b] if isinstance(merges[0], list) else f"{a} {b}")
    return tok


def build_model(path: str, shape: dict, seed: int, device: str = "cpu", dtype: str = "float32") -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    logger.info("building random model %s at %s", shape, path)
    os.makedirs(path, exist_ok=True)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    config = LlamaConfig(**shape, rms_norm_eps=1e-5, bos_token_id=None, eos_token_id=0, pad_token_id=0,
                         initializer_range=0.02)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
    model.save_pretrained(path)
    del model
    tok = extended_tokenizer(shape["vocab_size"], seed)
    with open(os.path.join(path, "tokenizer.json"), "w") as f:
        json.dump(tok, f, ensure_ascii=False)
    for name in TOKENIZER_FILES[1:]:
        shutil.copy(os.path.join(SHIPPED, name), os.path.join(path, name))
    gen = os.path.join(SHIPPED, "generation_config.json")
    if os.path.exists(gen):
        shutil.copy(gen, os.path.join(path, "generation_config.json"))
    with open(os.path.join(path, "DONE"), "w") as f:
        f.write("ok\n")


def param_count(path: str) -> int:
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(path)
    h, i, L, v = c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.vocab_size
    kv = c.num_key_value_heads * (getattr(c, "head_dim", None) or h // c.num_attention_heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return v * h * (1 if c.tie_word_embeddings else 2) + L * per_layer + h


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="build (or find) a benchmark model and print its folder")
    ap.add_argument("name", choices=sorted(SHAPES) + ["shipped"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    a = ap.parse_args()
    p = resolve_model(a.name, device=a.device, dtype=a.dtype)
    print(p, f"{param_count(p) / 1e6:.1f}M params")
