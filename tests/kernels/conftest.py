"""Kernel tests: run the Triton kernels on the CPU through the Triton interpreter.

``TRITON_INTERPRET`` must be set before triton is first imported, hence at conftest import
(only when no GPU is present: on a CUDA machine the kernels run natively). If triton is missing
or cannot run a trivial kernel, every test in this folder is skipped with the reason.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


def _probe_triton() -> str | None:
    """None when a trivial kernel runs on this machine, else why not."""
    try:
        import triton
        import triton.language as tl
    except Exception as e:  # noqa: BLE001 - any failure means "cannot run here"
        return f"triton not importable: {e!r}"

    @triton.jit
    def _add_one(X, N: tl.constexpr):
        offs = tl.arange(0, N)
        tl.store(X + offs, tl.load(X + offs) + 1)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        x = torch.zeros(16, device=device)
        _add_one[(1,)](x, N=16)
        if not bool((x == 1).all()):
            return "triton probe kernel produced wrong values"
    except Exception as e:  # noqa: BLE001
        hint = "" if device == "cuda" else " (CPU needs TRITON_INTERPRET=1 before triton is imported)"
        return f"triton cannot run a kernel on {device}{hint}: {e!r}"
    return None


_SKIP_REASON = _probe_triton()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _SKIP_REASON is None:
        return
    here = os.path.dirname(os.path.abspath(__file__))
    marker = pytest.mark.skip(reason=_SKIP_REASON)
    for item in items:
        if str(item.fspath).startswith(here):
            item.add_marker(marker)
