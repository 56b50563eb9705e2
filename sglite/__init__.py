"""sglite: SGLang's programming model on a compact serving runtime.

``import sglite`` is light: it never imports torch, transformers or triton.
``Engine``, ``Runtime`` and ``launch_server`` come from ``sglite_runtime`` and
are imported only when first used.
"""
from __future__ import annotations

import typing as _typing

from sglite.backend import BaseBackend, EngineBackend, RuntimeEndpoint
from sglite.backend.unsupported import Anthropic, Crusoe, LiteLLM, VertexAI
from sglite.global_config import global_config
from sglite.lang.api import (
    assistant, assistant_begin, assistant_end, flush_cache, function, gen, gen_int, gen_string,
    get_server_info, image, select, separate_reasoning, set_default_backend, system, system_begin,
    system_end, user, user_begin, user_end, video,
)
from sglite.protocol.choices import (
    greedy_token_selection, token_length_normalized, unconditional_likelihood_normalized,
)

__version__ = "0.1.0"

__all__ = [
    "function", "gen", "gen_int", "gen_string", "select", "image", "video", "separate_reasoning",
    "system", "user", "assistant", "system_begin", "system_end", "user_begin", "user_end",
    "assistant_begin", "assistant_end", "set_default_backend", "flush_cache", "get_server_info",
    "RuntimeEndpoint", "EngineBackend", "BaseBackend", "Runtime", "Engine", "launch_server",
    "token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized",
    "global_config", "__version__", "OpenAI", "Anthropic", "LiteLLM", "VertexAI", "Crusoe", "ServerArgs",
]

# name -> (module, attribute); resolved on first access so torch stays unloaded.
_LAZY = {
    "Engine": ("sglite_runtime.entrypoints.engine", "Engine"),
    "Runtime": ("sglite.backend.local_runtime", "Runtime"),
    "launch_server": ("sglite_runtime.entrypoints.launcher", "launch_server"),
    "ServerArgs": ("sglite_runtime.server_args", "ServerArgs"),
    "OpenAI": ("sglite.backend.openai", "OpenAI"),
}


def __getattr__(name: str) -> _typing.Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sglite' has no attribute {name!r}")


# `from __future__ import annotations` binds a module global; it is not part of the API.
del annotations
