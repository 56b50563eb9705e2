"""Backends: where a program's gens and selects run."""
from __future__ import annotations

from typing import Any

from sglite.backend.base import BaseBackend
from sglite.backend.engine_backend import EngineBackend
from sglite.backend.runtime_endpoint import RuntimeEndpoint

__all__ = ["BaseBackend", "EngineBackend", "RuntimeEndpoint", "as_backend"]


def as_backend(obj: Any) -> BaseBackend:
    """Turn a backend, an ``sglite.Engine`` or an ``sglite.Runtime`` into a backend.

    Duck-typed on purpose: importing the runtime classes would pull in torch.
    """
    if isinstance(obj, BaseBackend):
        return obj
    endpoint = getattr(obj, "endpoint", None)
    if isinstance(endpoint, BaseBackend):
        return endpoint  # sglite.Runtime
    if endpoint is not None or isinstance(getattr(obj, "url", None), str):
        url: Any = getattr(obj, "url", None) or endpoint  # duck-typed: the server's URL
        return RuntimeEndpoint(url, api_key=getattr(obj, "api_key", None))
    if callable(getattr(obj, "generate", None)) and callable(getattr(obj, "get_model_info", None)):
        return EngineBackend(obj)  # sglite.Engine
    raise TypeError(f"cannot use {type(obj).__name__} as a backend")
