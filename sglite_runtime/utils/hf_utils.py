"""Model folders: local paths or Hugging Face Hub ids, and what is read from them
(tokenizer, EOS ids, chat template, generation defaults).

A ``--model-path`` that is an existing folder is used as is. One that looks like a filesystem
path (absolute, ``./``, ``../``, ``~``) but is not a folder is an error. Anything else is a Hub
id (``ORG/NAME``), resolved with ``huggingface_hub.snapshot_download`` into the library's own
cache (``HF_HOME`` / ``HF_HUB_CACHE``), downloading only the files a model needs, honouring
``HF_HUB_OFFLINE``, ``HF_TOKEN`` and ``--revision``.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

# What serving a model needs; not *.bin/*.pth/ONNX/GGUF copies that many repos also carry.
HUB_ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "preprocessor_config.json",
]

# Sub-folders (Meta's original/, ONNX/GGUF exports) and Mistral's consolidated.safetensors, a
# second full copy of the weights in another layout.
HUB_IGNORE_PATTERNS = ["*/*", "consolidated*"]

_resolved: dict[tuple[str, str | None], str] = {}


def _looks_like_path(path: str) -> bool:
    return (
        os.path.isabs(path)
        or path.startswith(("./", "../", "~", ".\\", "..\\"))
        or path in (".", "..")
        or path.count("/") > 1
    )


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def resolve_model_path(path: str, revision: str | None = None) -> str:
    """The local folder for ``path``: the folder itself, or the Hub snapshot of id ``path``.

    Raises ``ValueError`` for a filesystem-like path that is not a folder, and for a Hub id
    that is offline and not cached (naming the id and the cache folder searched).
    """
    if os.path.isdir(path):
        return path
    if _looks_like_path(path):
        raise ValueError(f"no such model folder: {path!r}")
    key = (path, revision)
    if key in _resolved:
        return _resolved[key]
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    cache = constants.HF_HUB_CACHE
    offline = _offline()
    try:
        local = snapshot_download(
            path,
            revision=revision,
            allow_patterns=HUB_ALLOW_PATTERNS,
            ignore_patterns=HUB_IGNORE_PATTERNS,
            local_files_only=offline,
            token=os.environ.get("HF_TOKEN") or None,
        )
    except HFValidationError as e:
        raise ValueError(f"{path!r} is neither a local model folder nor a valid Hub model id ({e})") from e
    except (LocalEntryNotFoundError, FileNotFoundError) as e:
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        rev = f" at revision {revision!r}" if revision else ""
        incomplete = f" ({e})" if type(e).__name__ == "IncompleteSnapshotError" else ""
        raise ValueError(
            f"model {path!r}{rev} is not in the Hugging Face cache {cache!r} and {why}; "
            f"download it first (unset HF_HUB_OFFLINE) or pass a local folder{incomplete}"
        ) from e
    except RepositoryNotFoundError as e:
        raise ValueError(f"no Hub model {path!r} (not found, or gated: set HF_TOKEN)") from e
    logger.info("model %s%s resolved to %s", path, f"@{revision}" if revision else "", local)
    _resolved[key] = local
    return local


def get_tokenizer(path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """A fast HF tokenizer from a local folder or a Hub id (resolved via the cache first).

    ``trust_remote_code`` (``--trust-remote-code``) lets transformers run a tokenizer class
    shipped as Python code in the model folder; without it such a folder is an error."""
    from transformers import AutoTokenizer

    folder = resolve_model_path(path, revision)
    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)


def load_generation_config(model_path: str, revision: str | None = None) -> dict:
    """``generation_config.json`` of the model as a dict (empty when there is none)."""
    gen_cfg = os.path.join(resolve_model_path(model_path, revision), "generation_config.json")
    if not os.path.exists(gen_cfg):
        return {}
    with open(gen_cfg) as f:
        return json.load(f)


def get_eos_token_ids(model_path: str, tokenizer: Any, revision: str | None = None) -> set[int]:
    ids: set[int] = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    eos = load_generation_config(model_path, revision).get("eos_token_id")
    if isinstance(eos, int):
        ids.add(eos)
    elif isinstance(eos, list):
        ids.update(int(x) for x in eos)
    return ids


# generation_config.json keys that become request defaults (SGLang --sampling-defaults model).
SAMPLING_DEFAULT_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


def sampling_defaults(model_path: str, revision: str | None = None) -> dict:
    """The sampling defaults a model ships in ``generation_config.json``.

    Only when ``do_sample`` is not false (a greedy config means "no sampling defaults", as in
    vLLM), and only the keys sglite's SamplingParams has.
    """
    cfg = load_generation_config(model_path, revision)
    if cfg.get("do_sample") is False:
        return {}
    return {k: cfg[k] for k in SAMPLING_DEFAULT_KEYS if cfg.get(k) is not None}


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
