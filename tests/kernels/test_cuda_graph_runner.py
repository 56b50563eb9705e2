"""CudaGraphRunner's batching logic on the CPU (capture=False runs the padded batch eagerly).

Checks that padding a decode batch up to a captured size changes neither the real rows' outputs
nor any real KV slot: dummy rows write slot 0 and read through the all-zero reserved row.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from sglite_runtime.attention.triton_backend import TritonAttnBackend  # noqa: E402
from sglite_runtime.layers.radix_attention import RadixAttention  # noqa: E402
from sglite_runtime.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool  # noqa: E402
from sglite_runtime.model_executor.cuda_graph_runner import CudaGraphRunner, capture_batch_sizes  # noqa: E402
from sglite_runtime.model_executor.forward_batch import ForwardBatch, ForwardMode  # noqa: E402

H, KVH, D = 2, 1, 32


class _FakeRunner:
    """The attributes CudaGraphRunner needs: one attention layer fed from an embedding of ids."""

    def __init__(self, device: str = "cpu") -> None:
        g = torch.Generator().manual_seed(0)
        self.device = device
        self.req_to_token_pool = ReqToTokenPool(12, 64, device)
        self.token_to_kv_pool = MHATokenToKVPool(128, 1, torch.float32, KVH, D, 1, device)
        self.attn_backend = TritonAttnBackend(num_kv_splits=2)
        self.layer = RadixAttention(H, D, D**-0.5, KVH, layer_id=0)
        self.emb = torch.randn(50, (H + 2 * KVH) * D, generator=g).to(device)
        self.model = None

    def forward_decode_raw(self, fb: ForwardBatch) -> torch.Tensor:
        x = self.emb[fb.input_ids] + fb.positions[:, None].float() * 0.01
        q, k, v = x.split([H * D, KVH * D, KVH * D], dim=-1)
        return self.layer(q, k, v, fb)


def test_capture_batch_sizes() -> None:
    assert capture_batch_sizes(64) == [1, 2, 4, 8, 16, 24, 32, 40, 48, 56, 64]
    assert capture_batch_sizes(3) == [1, 2, 3]
    assert capture_batch_sizes(20) == [1, 2, 4, 8, 16, 20]


def _cases():
    yield from [(3, "cpu"), (5, "cpu")]
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="graph capture needs CUDA")
    yield from [pytest.param(3, "cuda", marks=cuda), pytest.param(8, "cuda", marks=cuda)]


@pytest.mark.parametrize("bs,device", list(_cases()))
def test_padded_replay_matches_eager(bs: int, device: str) -> None:
    mr = _FakeRunner(device)
    runner = CudaGraphRunner(mr, max_bs=8, capture=device == "cuda")
    assert device == "cpu" or runner.graphs
    assert runner.padded_size(bs) in (4, 8)
    g = torch.Generator().manual_seed(bs)
    rows = mr.req_to_token_pool.alloc(bs)
    assert runner.dummy_row not in rows
    # Each request already has a prefix in the pool; the decode token goes to a fresh slot.
    lens = torch.randint(1, 20, (bs,), generator=g).tolist()
    slot = 1
    for r, n in zip(rows, lens):
        mr.req_to_token_pool.req_to_token[r, :n] = torch.arange(slot, slot + n, dtype=torch.int32)
        slot += n
    k_buf, v_buf = mr.token_to_kv_pool.get_kv_buffer(0)
    k_buf[1:slot] = torch.randn(slot - 1, KVH, D, generator=g).to(device)
    v_buf[1:slot] = torch.randn(slot - 1, KVH, D, generator=g).to(device)
    loc = torch.arange(slot, slot + bs)
    for r, n, s in zip(rows, lens, loc.tolist()):
        mr.req_to_token_pool.req_to_token[r, n] = s
    seq = [n + 1 for n in lens]
    fb = ForwardBatch(
        forward_mode=ForwardMode.DECODE, batch_size=bs,
        input_ids=torch.randint(0, 50, (bs,), generator=g).to(device), positions=torch.tensor(lens, device=device),
        out_cache_loc=loc.to(device), req_pool_indices=torch.tensor(rows, device=device),
        seq_lens=torch.tensor(seq, device=device), seq_lens_cpu=seq,
        req_to_token_pool=mr.req_to_token_pool, token_to_kv_pool=mr.token_to_kv_pool, attn_backend=mr.attn_backend,
    )  # fmt: skip
    assert runner.can_run(fb)
    before_k = k_buf.clone()
    mr.attn_backend.init_forward_metadata(fb)
    eager = mr.forward_decode_raw(fb)
    eager_k = k_buf.clone()
    k_buf.copy_(before_k)
    padded = runner.replay(fb)
    assert padded.shape == eager.shape
    assert (padded - eager).abs().max().item() <= 1e-5
    # Real slots hold the same KV as the eager run; only slot 0 (the dummy) may differ.
    assert torch.equal(k_buf[1:], eager_k[1:])
    assert int(mr.req_to_token_pool.req_to_token[runner.dummy_row].abs().sum()) == 0


def test_can_run_rejects_extend_and_large() -> None:
    mr = _FakeRunner()
    runner = CudaGraphRunner(mr, max_bs=4, capture=False)
    fb = ForwardBatch(
        forward_mode=ForwardMode.DECODE, batch_size=5, input_ids=torch.zeros(5, dtype=torch.int64),
        positions=torch.zeros(5, dtype=torch.int64), out_cache_loc=torch.zeros(5, dtype=torch.int64),
        req_pool_indices=torch.zeros(5, dtype=torch.int64), seq_lens=torch.ones(5, dtype=torch.int64),
        seq_lens_cpu=[1] * 5, req_to_token_pool=mr.req_to_token_pool, token_to_kv_pool=mr.token_to_kv_pool,
        attn_backend=mr.attn_backend,
    )  # fmt: skip
    assert not runner.can_run(fb)
    fb.batch_size = 2
    assert runner.can_run(fb)
    fb.forward_mode = ForwardMode.EXTEND
    assert not runner.can_run(fb)
