"""Triton paged decode attention vs the torch reference (CPU via TRITON_INTERPRET, or CUDA)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from kernels.decode_attention import decode_attention_fwd  # noqa: E402
from kernels.reference import decode_attention_ref  # noqa: E402
from kernels.testing import make_paged_kv  # noqa: E402

# (q heads, kv heads, head dim, page size): every GQA ratio 1/2/4/8 with both head dims and
# both page sizes, plus a non-power-of-two head dim that exercises the padded-D masks.
CASES = [
    (4, 4, 64, 1),
    (4, 4, 128, 16),
    (4, 2, 64, 16),
    (4, 2, 128, 1),
    (8, 2, 64, 1),
    (8, 2, 128, 16),
    (8, 1, 64, 16),
    (8, 1, 128, 1),
    (2, 1, 80, 16),
]


def _run(h: int, kvh: int, d: int, page: int, seq_lens: list[int], splits: int, dtype, device) -> float:
    g = torch.Generator().manual_seed(hash((h, kvh, d, page, splits)) % 2**31)
    kv = make_paged_kv(seq_lens, kvh, d, page, dtype=dtype, device=device, generator=g)
    q = torch.randn(len(seq_lens), h, d, generator=g).to(dtype).to(device)
    out = torch.full_like(q, float("nan"))
    ref = torch.empty_like(q)
    scale = d**-0.5
    args = (kv.k_buffer, kv.v_buffer)
    decode_attention_fwd(q, *args, out, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, scale, splits)
    decode_attention_ref(q, *args, ref, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, scale)
    return (out.float() - ref.float()).abs().max().item()


@pytest.mark.parametrize("h,kvh,d,page", CASES)
def test_decode_matches_reference_fp32(h: int, kvh: int, d: int, page: int) -> None:
    g = torch.Generator().manual_seed(h * 1000 + kvh * 100 + d + page)
    # Lengths 1 .. ~200; length 1 and lengths shorter than the split count included.
    seq_lens = [1, 5] + torch.randint(2, 200, (1,), generator=g).tolist()
    # 4 splits keeps the interpreter's program count down; other counts are tested below.
    err = _run(h, kvh, d, page, seq_lens, 4, torch.float32, "cpu")
    assert err <= 1e-4, f"max abs error {err:.3e}"


@pytest.mark.parametrize("splits", [1, 3, 8])
def test_decode_split_counts(splits: int) -> None:
    err = _run(2, 1, 64, 16, [1, 33, 130], splits, torch.float32, "cpu")
    assert err <= 1e-4, f"max abs error {err:.3e}"


def test_decode_reads_only_its_row() -> None:
    """Poisoning every slot a request does not own must not change its output."""
    kv = make_paged_kv([40, 70], 2, 64, 16)
    q = torch.randn(2, 4, 64)
    out1, out2 = torch.empty_like(q), torch.empty_like(q)
    decode_attention_fwd(q, kv.k_buffer, kv.v_buffer, out1, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, 0.125)
    used = torch.zeros(kv.k_buffer.shape[0], dtype=torch.bool)
    for i, n in enumerate(kv.seq_lens.tolist()):
        used[kv.req_to_token[kv.req_pool_indices[i], :n].long()] = True
    kv.k_buffer[~used] = 1e4
    kv.v_buffer[~used] = float("nan")
    decode_attention_fwd(q, kv.k_buffer, kv.v_buffer, out2, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, 0.125)
    assert torch.equal(out1, out2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for a native bf16 run")
@pytest.mark.parametrize("h,kvh,d,page", [(32, 8, 64, 1), (16, 2, 128, 16)])
def test_decode_bf16_cuda(h: int, kvh: int, d: int, page: int) -> None:
    seq_lens = [1, 17, 300, 1500, 4096, 64]
    err = _run(h, kvh, d, page, seq_lens, 8, torch.bfloat16, "cuda")
    assert err <= 2e-2, f"max abs error {err:.3e}"
