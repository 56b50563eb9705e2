"""Attention backends and the factory that picks one.

Backends are imported lazily so that importing this package never loads triton or flashinfer
(CPU tests must be able to set ``TRITON_INTERPRET=1`` before triton is first imported).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sglite_runtime.attention.base import AttentionBackend

logger = logging.getLogger(__name__)

BACKEND_NAMES = ("auto", "torch_native", "triton", "flashinfer")


def _is_cuda(device: str | torch.device) -> bool:
    return torch.device(device).type == "cuda"


def resolve_attention_backend_name(name: str, device: str | torch.device) -> str:
    """``auto`` → flashinfer on CUDA when importable, else triton on CUDA, else torch_native."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKEND_NAMES)}")
    if name != "auto":
        return name
    if not _is_cuda(device):
        return "torch_native"
    from sglite_runtime.attention.flashinfer_backend import flashinfer_available

    return "flashinfer" if flashinfer_available() else "triton"


def create_attention_backend(name: str, device: str | torch.device, model_runner: Any = None) -> "AttentionBackend":
    """Build the attention backend ``name`` for ``device``.

    ``model_runner`` (optional, anything with a ``model`` attribute) tells whether the model has
    sliding-window layers: FlashInfer's wrappers here are planned without a window, so ``auto``
    picks Triton for such models and an explicit ``flashinfer`` is refused.
    """
    model = getattr(model_runner, "model", None)
    windowed = model is not None and any(getattr(m, "sliding_window", None) for m in model.modules())
    resolved = resolve_attention_backend_name(name, device)
    if resolved == "flashinfer" and windowed:
        if name != "auto":
            raise ValueError(
                "attention backend 'flashinfer' does not support this model's sliding-window layers; "
                "use --attention-backend triton or torch_native"
            )
        resolved = "triton"
    if resolved == "torch_native":
        from sglite_runtime.attention.torch_native import TorchNativeAttnBackend

        backend: AttentionBackend = TorchNativeAttnBackend()
    elif resolved == "triton":
        if not _is_cuda(device) and os.environ.get("TRITON_INTERPRET") != "1":
            logger.warning(
                "attention backend 'triton' on %s needs TRITON_INTERPRET=1 set before triton is imported "
                "(and is very slow there); use 'torch_native' for CPU serving",
                device,
            )
        from sglite_runtime.attention.triton_backend import TritonAttnBackend

        backend = TritonAttnBackend()
    elif resolved == "flashinfer":
        if not _is_cuda(device):
            raise ValueError(f"attention backend 'flashinfer' needs a CUDA device, got {device!r}")
        from sglite_runtime.attention.flashinfer_backend import FlashInferAttnBackend

        backend = FlashInferAttnBackend(device)
    else:  # pragma: no cover - resolve_attention_backend_name rejects everything else
        raise AssertionError(resolved)
    logger.info("attention backend: %s (requested %s) on %s", resolved, name, device)
    return backend
