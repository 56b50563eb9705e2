"""Shared fixtures: tiny models on disk (random, seeded) and the shipped model.

Nothing here downloads anything: random models are built from configs and saved under a
session temp dir, with the shipped model's tokenizer files copied beside them.
"""

from __future__ import annotations

import os
import shutil
import sys

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _set_triton_interpret() -> None:
    # Triton reads TRITON_INTERPRET at import: set it before any test module imports triton,
    # so the kernel tests run on the CPU interpreter when there is no GPU.
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_set_triton_interpret()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "sglite_runtime", "assets", "sglite-tiny")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

sys.path.insert(0, os.path.join(ROOT, "tests", "runtime"))


def make_model_with_tokenizer(path: str, arch: str = "llama", seed: int = 0, **overrides) -> str:
    """A random tiny HF model whose vocabulary is the shipped tokenizer's, saved at ``path``."""
    from model_utils import make_tiny_model

    overrides.setdefault("vocab_size", 4096)
    overrides.setdefault("max_position_embeddings", 1024)
    make_tiny_model(path, arch, seed=seed, std=0.08, **overrides)
    for f in TOKENIZER_FILES:
        shutil.copy(os.path.join(SHIPPED, f), os.path.join(path, f))
    return path


@pytest.fixture(scope="session")
def tiny_llama_path(tmp_path_factory) -> str:
    return make_model_with_tokenizer(str(tmp_path_factory.mktemp("tiny-llama")), "llama")


@pytest.fixture(scope="session")
def tiny_qwen3_path(tmp_path_factory) -> str:
    return make_model_with_tokenizer(str(tmp_path_factory.mktemp("tiny-qwen3")), "qwen3", seed=1)


@pytest.fixture(scope="session")
def shipped_model_path() -> str:
    if not os.path.exists(os.path.join(SHIPPED, "model.safetensors")):
        pytest.fail("the shipped model is missing: run sglite_runtime/assets/sglite-tiny/train.py")
    return SHIPPED
