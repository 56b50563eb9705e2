"""Triton paged extend attention vs the torch reference (CPU via TRITON_INTERPRET, or CUDA)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from kernels.extend_attention import extend_attention_fwd  # noqa: E402
from kernels.reference import extend_attention_ref  # noqa: E402
from kernels.testing import make_paged_kv  # noqa: E402

# (q heads, kv heads, head dim, page size): GQA 1/2/4/8 x head dims 64/128 x page sizes 1/16,
# plus a non-power-of-two head dim.
CASES = [
    (2, 2, 64, 1),
    (2, 2, 128, 16),
    (4, 2, 64, 16),
    (4, 2, 128, 1),
    (4, 1, 64, 1),
    (4, 1, 128, 16),
    (8, 1, 64, 16),
    (8, 1, 128, 1),
    (2, 1, 80, 16),
]


def _run(h, kvh, d, page, prefix_lens, ext_lens, dtype, device, pass_max: bool = True) -> float:
    g = torch.Generator().manual_seed(h * 1000 + kvh * 100 + d + page)
    seq_lens = [p + e for p, e in zip(prefix_lens, ext_lens)]
    kv = make_paged_kv(seq_lens, kvh, d, page, dtype=dtype, device=device, generator=g)
    n = sum(ext_lens)
    q = torch.randn(n, h, d, generator=g).to(dtype).to(device)
    k = torch.randn(n, kvh, d, generator=g).to(dtype).to(device)
    v = torch.randn(n, kvh, d, generator=g).to(dtype).to(device)
    ext = torch.tensor(ext_lens, dtype=torch.int64, device=device)
    start = torch.cumsum(ext, 0) - ext
    out = torch.full_like(q, float("nan"))
    ref = torch.empty_like(q)
    common = (kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, ext, start, d**-0.5)
    extend_attention_fwd(q, k, v, out, *common, max(ext_lens) if pass_max else None)
    extend_attention_ref(q, k, v, ref, *common)
    return (out.float() - ref.float()).abs().max().item()


@pytest.mark.parametrize("h,kvh,d,page", CASES)
def test_extend_matches_reference_fp32(h: int, kvh: int, d: int, page: int) -> None:
    g = torch.Generator().manual_seed(7 * h + 3 * kvh + d + page)
    # One request with no prefix, one with a long one; extend lengths 1 .. 64.
    prefix_lens = [0, int(torch.randint(100, 200, (1,), generator=g)), int(torch.randint(1, 40, (1,), generator=g))]
    ext_lens = [int(torch.randint(1, 30, (1,), generator=g)), 1, int(torch.randint(17, 65, (1,), generator=g))]
    err = _run(h, kvh, d, page, prefix_lens, ext_lens, torch.float32, "cpu")
    assert err <= 1e-4, f"max abs error {err:.3e}"


def test_extend_without_host_max() -> None:
    err = _run(2, 1, 64, 16, [3, 0], [20, 5], torch.float32, "cpu", pass_max=False)
    assert err <= 1e-4, f"max abs error {err:.3e}"


def test_extend_prefix_only_from_table() -> None:
    """Slots outside the requests' prefixes are poisoned; the result must not change."""
    g = torch.Generator().manual_seed(3)
    kv = make_paged_kv([20, 45], 1, 64, 16, generator=g)
    ext = torch.tensor([4, 9])
    start = torch.cumsum(ext, 0) - ext
    q, k, v = torch.randn(13, 2, 64, generator=g), torch.randn(13, 1, 64, generator=g), torch.randn(13, 1, 64, generator=g)
    prefix_used = torch.zeros(kv.k_buffer.shape[0], dtype=torch.bool)
    for i, (s, e) in enumerate(zip(kv.seq_lens.tolist(), ext.tolist())):
        prefix_used[kv.req_to_token[kv.req_pool_indices[i], : s - e].long()] = True
    outs = []
    for poison in (False, True):
        if poison:
            kv.k_buffer[~prefix_used] = 1e4
            kv.v_buffer[~prefix_used] = float("nan")
        o = torch.empty_like(q)
        extend_attention_fwd(q, k, v, o, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices,
                             kv.seq_lens, ext, start, 0.125)  # fmt: skip
        outs.append(o)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for a native bf16 run")
@pytest.mark.parametrize("h,kvh,d,page", [(32, 8, 64, 1), (16, 2, 128, 16)])
def test_extend_bf16_cuda(h: int, kvh: int, d: int, page: int) -> None:
    err = _run(h, kvh, d, page, [0, 500, 37, 1000], [300, 1, 129, 64], torch.bfloat16, "cuda")
    assert err <= 2e-2, f"max abs error {err:.3e}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for a native fp32 (ieee dot) run")
def test_extend_fp32_cuda() -> None:
    err = _run(8, 2, 128, 16, [0, 200, 37], [64, 1, 129], torch.float32, "cuda")
    assert err <= 1e-4, f"max abs error {err:.3e}"
