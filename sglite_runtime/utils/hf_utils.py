"""Tokenizer, config and chat-template loading from a local model folder (never the hub)."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)


def get_tokenizer(path: str) -> Any:
    """A fast HF tokenizer from a local folder. Offline: a missing file is an error, not a download."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise ValueError(f"Tokenizer path {path!r} is not a local folder (sglite never downloads models).")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def get_eos_token_ids(model_path: str, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_cfg = os.path.join(model_path, "generation_config.json")
    if os.path.exists(gen_cfg):
        with open(gen_cfg) as f:
            eos = json.load(f).get("eos_token_id")
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, list):
            ids.update(int(x) for x in eos)
    return ids


def load_chat_template(tokenizer: Any, override: str | None) -> str | None:
    """The model folder's Jinja chat template, or ``override`` (a file path or a template string)."""
    if override:
        if os.path.exists(override):
            with open(override) as f:
                text = f.read()
            if override.endswith(".json"):
                text = json.loads(text).get("chat_template", text)
            return text
        return override
    return getattr(tokenizer, "chat_template", None)
