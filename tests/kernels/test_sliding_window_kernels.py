"""Sliding-window attention in the Triton kernels vs the torch reference (TRITON_INTERPRET on CPU).

Windows shorter than the cached prefix, than one extend block and than the decode length, so
every masked path runs: tiles skipped before the window, tiles some rows see and others don't,
and decode splits over just the window.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from kernels.decode_attention import decode_attention_fwd  # noqa: E402
from kernels.extend_attention import extend_attention_fwd  # noqa: E402
from kernels.reference import decode_attention_ref, extend_attention_ref  # noqa: E402
from kernels.testing import make_paged_kv  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("window", [1, 24])
def test_extend_sliding_window(window: int) -> None:
    h, kvh, d, page = 4, 2, 32, 1
    prefix_lens, ext_lens = [0, 40, 3], [37, 20, 1]
    g = torch.Generator().manual_seed(window)
    seq_lens = [p + e for p, e in zip(prefix_lens, ext_lens)]
    kv = make_paged_kv(seq_lens, kvh, d, page, dtype=torch.float32, device=DEVICE, generator=g)
    n = sum(ext_lens)
    q, k, v = (torch.randn(n, hh, d, generator=g).to(DEVICE) for hh in (h, kvh, kvh))
    ext = torch.tensor(ext_lens, device=DEVICE)
    start = torch.cumsum(ext, 0) - ext
    out, ref, full = torch.full_like(q, float("nan")), torch.empty_like(q), torch.empty_like(q)
    common = (kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, ext, start, d**-0.5)
    extend_attention_fwd(q, k, v, out, *common, max(ext_lens), sliding_window=window)
    extend_attention_ref(q, k, v, ref, *common, sliding_window=window)
    extend_attention_ref(q, k, v, full, *common)
    assert (out - ref).abs().max().item() <= 1e-5
    assert (ref - full).abs().max().item() > 1e-2  # the window really changed the result


@pytest.mark.parametrize("window", [7, 64])
def test_decode_sliding_window(window: int) -> None:
    h, kvh, d, page = 4, 1, 32, 16
    seq_lens = [1, 6, 50, 90]
    g = torch.Generator().manual_seed(100 + window)
    kv = make_paged_kv(seq_lens, kvh, d, page, dtype=torch.float32, device=DEVICE, generator=g)
    q = torch.randn(len(seq_lens), h, d, generator=g).to(DEVICE)
    out, ref, full = torch.full_like(q, float("nan")), torch.empty_like(q), torch.empty_like(q)
    args = (kv.k_buffer, kv.v_buffer)
    tail = (kv.req_to_token, kv.req_pool_indices, kv.seq_lens, d**-0.5, 3)
    decode_attention_fwd(q, *args, out, *tail, sliding_window=window)
    decode_attention_ref(q, *args, ref, *tail, sliding_window=window)
    decode_attention_ref(q, *args, full, *tail)
    assert (out - ref).abs().max().item() <= 1e-5
    assert (ref - full).abs().max().item() > 1e-2
