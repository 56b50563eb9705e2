"""The shipped default model (sglite-tiny) is a valid, offline-loadable HF model.

Checks the folder with plain transformers, independent of sglite's own runtime:
size budget, tokenizer round trip, chat template, and that the weights actually learned
something (held-out perplexity far below the uniform perplexity, i.e. the vocab size).
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from sglite_runtime.server_args import SHIPPED_MODEL_PATH

MODEL_DIR = SHIPPED_MODEL_PATH
MAX_FOLDER_BYTES = 10 * 1000 * 1000

pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(MODEL_DIR, "model.safetensors")),
    reason="sglite-tiny weights not built (run sglite_runtime/assets/sglite-tiny/train.py)",
)


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    # local_files_only: the folder must be self-contained, any hub access is a bug.
    return AutoTokenizer.from_pretrained(MODEL_DIR, local_files_only=True)


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(MODEL_DIR, local_files_only=True)
    m.eval()
    return m


def test_folder_size_within_budget() -> None:
    total = 0
    for root, _, files in os.walk(MODEL_DIR):
        if "__pycache__" in root:
            continue
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    assert total <= MAX_FOLDER_BYTES, f"sglite-tiny folder is {total} bytes"


def test_config_and_model_load(model, tokenizer) -> None:
    cfg = model.config
    assert cfg.model_type == "llama"
    assert cfg.tie_word_embeddings
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # GQA
    assert cfg.max_position_embeddings == tokenizer.model_max_length
    assert cfg.vocab_size == len(tokenizer)
    assert model.dtype == torch.float32
    with open(os.path.join(MODEL_DIR, "generation_config.json")) as f:
        eos = json.load(f)["eos_token_id"]
    eos = eos if isinstance(eos, list) else [eos]
    assert tokenizer.eos_token_id in eos
    assert tokenizer.convert_tokens_to_ids("<|end|>") in eos


def test_special_tokens(tokenizer) -> None:
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.bos_token is None
    for tok in ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>"):
        ids = tokenizer.encode(tok, add_special_tokens=False)
        assert len(ids) == 1, tok
    # Nothing is prepended or appended implicitly.
    assert tokenizer.encode("abc") == tokenizer.encode("abc", add_special_tokens=False)


def test_chat_template(tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 3 + 4?"},
        {"role": "assistant", "content": "3 + 4 = 7."},
        {"role": "user", "content": "Thanks!"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|system|>\nYou are a helpful assistant.<|end|>\n"
        "<|user|>\nWhat is 3 + 4?<|end|>\n"
        "<|assistant|>\n3 + 4 = 7.<|end|>\n"
        "<|user|>\nThanks!<|end|>\n"
        "<|assistant|>\n"
    )
    no_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    assert not no_prompt.endswith("<|assistant|>\n")


@pytest.mark.parametrize("text", [
    "",
    "Hello, world!",
    "  leading and trailing spaces  \n\n\ttabs\r\n",
    "Unicode: héllo wörld, 日本語, Ελληνικά, emoji 🎉🧪, combining e\u0301, zero\u200bwidth",
    '{"name": "Alice", "age": 31, "city": "Paris"}',
    "def f(x):\n    return x ** 2  # ok . , ? !",
    "\x00\x01 control \x7f and NBSP\u00a0end",
])
def test_tokenizer_round_trip(tokenizer, text: str) -> None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text


def test_heldout_perplexity_far_below_uniform(model, tokenizer) -> None:
    with open(os.path.join(MODEL_DIR, "heldout.txt"), encoding="utf-8") as f:
        text = f.read()
    ids = torch.tensor(tokenizer.encode(text, add_special_tokens=False))
    assert len(ids) > 200
    seq = 256
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, seq):
            window = ids[start:start + seq + 1]
            if len(window) < 2:
                break
            logits = model(input_ids=window[None, :-1]).logits[0]
            total += torch.nn.functional.cross_entropy(logits, window[1:], reduction="sum").item()
            count += len(window) - 1
    ppl = math.exp(total / count)
    uniform = model.config.vocab_size
    print(f"sglite-tiny held-out perplexity {ppl:.2f} over {count} tokens (uniform {uniform})")
    assert ppl < uniform / 8, f"held-out perplexity {ppl:.1f} vs uniform {uniform}"
