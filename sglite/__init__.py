"""sglite: SGLang's programming model on a compact serving runtime.

``import sglite`` is light: it never imports torch, transformers or triton.
``Engine``, ``Runtime`` and ``launch_server`` come from ``sglite_runtime`` and
are imported only when first used.
"""
from __future__ import annotations

import typing as _typing

# The settings object, not the module of the same name: bound eagerly so `sglite.global_config`
# is the object even after `import sglite.global_config` has run.
from sglite.global_config import global_config

__version__ = "0.1.0"

__all__ = [
    "function", "gen", "gen_int", "gen_string", "select", "image", "video", "separate_reasoning",
    "system", "user", "assistant", "system_begin", "system_end", "user_begin", "user_end",
    "assistant_begin", "assistant_end", "set_default_backend", "flush_cache", "get_server_info",
    "RuntimeEndpoint", "EngineBackend", "BaseBackend", "Runtime", "Engine", "launch_server",
    "token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized",
    "global_config", "__version__", "OpenAI", "Anthropic", "LiteLLM", "VertexAI", "Crusoe", "ServerArgs",
]

# name -> module; every public name is resolved on first access. This keeps `import sglite` light
# (no torch) and lets the runtime import `sglite.protocol` without loading the client's
# interpreter and backends (the runtime never imports the client; tests/protocol checks it).
_API = "sglite.lang.api"
_LAZY = {
    **{name: _API for name in (
        "assistant", "assistant_begin", "assistant_end", "flush_cache", "function", "gen", "gen_int",
        "gen_string", "get_server_info", "image", "select", "separate_reasoning", "set_default_backend",
        "system", "system_begin", "system_end", "user", "user_begin", "user_end", "video")},
    **{name: "sglite.backend" for name in ("BaseBackend", "EngineBackend", "RuntimeEndpoint")},
    **{name: "sglite.backend.unsupported" for name in ("Anthropic", "Crusoe", "LiteLLM", "VertexAI")},
    **{name: "sglite.protocol.choices" for name in (
        "greedy_token_selection", "token_length_normalized", "unconditional_likelihood_normalized")},
    "Engine": "sglite_runtime.entrypoints.engine",
    "Runtime": "sglite.backend.local_runtime",
    "launch_server": "sglite_runtime.entrypoints.launcher",
    "ServerArgs": "sglite_runtime.server_args",
    "OpenAI": "sglite.backend.openai",
}


_SUBPACKAGES = ("backend", "lang", "protocol")


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:  # `sglite.backend.as_backend(...)` after a bare `import sglite`
        import importlib

        return importlib.import_module(f"sglite.{name}")
    raise AttributeError(f"module 'sglite' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


# `from __future__ import annotations` binds a module global; it is not part of the API.
del annotations
