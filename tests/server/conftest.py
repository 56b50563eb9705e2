"""Fixtures for the HTTP server tests: a small model and servers started via ``launch_server``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

from sglite_runtime.server_args import SHIPPED_MODEL_PATH

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shipped model when its weights exist, else a random tiny Llama with its tokenizer."""
    if os.path.exists(os.path.join(SHIPPED_MODEL_PATH, "model.safetensors")):
        return SHIPPED_MODEL_PATH
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-model")
    for name in TOKENIZER_FILES:
        src = Path(SHIPPED_MODEL_PATH, name)
        if src.exists():
            shutil.copy(src, out / name)
    tok = AutoTokenizer.from_pretrained(str(out))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    tok.save_pretrained(str(out))
    return str(out)


def start(model_path: str, tmp_path_factory: pytest.TempPathFactory, **kw: Any) -> Any:
    """Start a server on a free loopback port; its log goes to a temp file (printed on failure)."""
    from sglite_runtime.entrypoints.launcher import launch_server

    log = tmp_path_factory.mktemp("server-log") / "server.log"
    f = open(log, "w")
    args = dict(max_total_tokens=8192, device="cpu", log_level="warning", num_threads=1, enable_metrics=True) | kw
    try:
        handle = launch_server(model_path, timeout=180, log_file=f, **args)
    except Exception:
        f.close()
        print(log.read_text())
        raise
    handle.log_path = log
    handle.log_file = f
    return handle


@pytest.fixture(scope="session")
def server(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One shared server for the read-mostly test modules."""
    handle = start(model_path, tmp_path_factory)
    yield handle
    handle.shutdown()
    handle.log_file.close()


def pool_is_clean(url: str, timeout: float = 10.0, headers: dict | None = None) -> dict:
    """Wait until no request runs and the KV pool is whole; return the last internal state."""
    import time

    import httpx

    deadline = time.monotonic() + timeout
    while True:
        s = httpx.get(url + "/server_info", headers=headers or {}, timeout=10).json()["internal_states"][0]
        pool = s["kv_pool"]
        ok = (pool["available"] + pool["evictable"] == pool["total"] and pool["protected"] == 0
              and s["num_running_reqs"] == 0 and s["num_waiting_reqs"] == 0)
        if ok or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


@pytest.fixture(scope="session")
def wait_clean() -> Any:
    """``wait_clean(url)``: see :func:`pool_is_clean`."""
    return pool_is_clean


@pytest.fixture(scope="session")
def start_server(model_path: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``start_server(**server_args)`` starts an extra server (the caller shuts it down)."""
    return lambda **kw: start(model_path, tmp_path_factory, **kw)
