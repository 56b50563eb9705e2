"""Triton RMSNorm and SiLU-and-mul vs their torch references."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from kernels.activation import silu_and_mul_fwd  # noqa: E402
from kernels.reference import rmsnorm_ref, silu_and_mul_ref  # noqa: E402
from kernels.rmsnorm import rmsnorm_fwd  # noqa: E402


@pytest.mark.parametrize("n", [64, 96, 1000])
def test_rmsnorm_fp32(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    x = torch.randn(5, n, generator=g) * 3
    w = torch.randn(n, generator=g)
    err = (rmsnorm_fwd(x, w, 1e-6) - rmsnorm_ref(x, w, 1e-6)).abs().max().item()
    assert err <= 1e-5, err


@pytest.mark.parametrize("d", [64, 80, 1500])
def test_silu_and_mul_fp32(d: int) -> None:
    x = torch.randn(2, 3, 2 * d, generator=torch.Generator().manual_seed(d)) * 4
    y = silu_and_mul_fwd(x)
    assert y.shape == (2, 3, d)
    err = (y - silu_and_mul_ref(x)).abs().max().item()
    assert err <= 1e-5, err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for a native bf16 run")
def test_norm_activation_bf16_cuda() -> None:
    x = torch.randn(300, 4096, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(4096, device="cuda", dtype=torch.bfloat16)
    assert (rmsnorm_fwd(x, w).float() - rmsnorm_ref(x, w).float()).abs().max().item() <= 5e-2
    assert (silu_and_mul_fwd(x).float() - silu_and_mul_ref(x).float()).abs().max().item() <= 5e-2
