"""TorchNativeAttnBackend against a dense masked-softmax reference on random tensors."""

from __future__ import annotations

import pytest
import torch

from sglite_runtime.attention.torch_native import TorchNativeAttnBackend
from sglite_runtime.layers.radix_attention import RadixAttention
from sglite_runtime.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool
from sglite_runtime.model_executor.forward_batch import ForwardBatch, ForwardMode

HEAD_DIM = 16
KV_HEADS = 2
NUM_SLOTS = 256


def dense_reference(q, k, v, prefix_len, scale):
    """q ``[e, H, D]`` (the last e positions), k/v ``[p+e, Hkv, D]``: masked softmax in fp64."""
    e, num_heads, _ = q.shape
    group = num_heads // k.shape[1]
    k = k.double().repeat_interleave(group, dim=1)
    v = v.double().repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q.double(), k) * scale
    q_pos = torch.arange(prefix_len, prefix_len + e)[:, None]
    k_pos = torch.arange(k.shape[0])[None, :]
    scores = scores.masked_fill(k_pos > q_pos, float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def _setup(gqa: int, prefix_lens: list[int], extend_lens: list[int], seed: int, mode: ForwardMode):
    """Random prefix KV in scattered pool slots, new q/k/v, and the ForwardBatch."""
    gen = torch.Generator().manual_seed(seed)
    num_heads = KV_HEADS * gqa
    layer = RadixAttention(num_heads, HEAD_DIM, HEAD_DIM**-0.5 * 1.3, KV_HEADS, layer_id=1)
    pool = MHATokenToKVPool(NUM_SLOTS, 1, torch.float32, KV_HEADS, HEAD_DIM, layer_num=2)
    r2t = ReqToTokenPool(max(8, len(prefix_lens) + 4), 128)
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    # Scattered slots so that a wrong gather through req_to_token can't pass by accident.
    slots = (torch.randperm(NUM_SLOTS, generator=gen)[: sum(seq_lens)] + 1).tolist()
    rows = [5, 2, 7, 0][: len(seq_lens)] if len(seq_lens) <= 4 else (
        torch.randperm(r2t.size, generator=gen)[: len(seq_lens)].tolist())
    prefix_kv, new_loc, cursor = [], [], 0
    for row, p, s in zip(rows, prefix_lens, seq_lens):
        mine = torch.tensor(slots[cursor : cursor + s])
        cursor += s
        r2t.req_to_token[row, :s] = mine.to(torch.int32)
        pk = torch.randn(p, KV_HEADS, HEAD_DIM, generator=gen)
        pv = torch.randn(p, KV_HEADS, HEAD_DIM, generator=gen)
        pool.set_kv_buffer(1, mine[:p], pk, pv)
        prefix_kv.append((pk, pv))
        new_loc.append(mine[p:])
    n = sum(extend_lens)
    q = torch.randn(n, num_heads * HEAD_DIM, generator=gen)
    k = torch.randn(n, KV_HEADS * HEAD_DIM, generator=gen)
    v = torch.randn(n, KV_HEADS * HEAD_DIM, generator=gen)
    fb = ForwardBatch(
        forward_mode=mode,
        batch_size=len(rows),
        input_ids=torch.zeros(n, dtype=torch.int64),
        positions=torch.cat([torch.arange(p, s) for p, s in zip(prefix_lens, seq_lens)]),
        out_cache_loc=torch.cat(new_loc).to(torch.int64),
        req_pool_indices=torch.tensor(rows),
        seq_lens=torch.tensor(seq_lens),
        seq_lens_cpu=seq_lens,
        req_to_token_pool=r2t,
        token_to_kv_pool=pool,
        attn_backend=TorchNativeAttnBackend(),
        extend_prefix_lens=torch.tensor(prefix_lens),
        extend_seq_lens=torch.tensor(extend_lens),
        extend_start_loc=torch.tensor([sum(extend_lens[:i]) for i in range(len(extend_lens))]),
        extend_prefix_lens_cpu=prefix_lens,
        extend_seq_lens_cpu=extend_lens,
    )
    return layer, fb, q, k, v, prefix_kv


def _check(layer, fb, q, k, v, prefix_kv, out, prefix_lens, extend_lens):
    H, Hkv = layer.tp_q_head_num, layer.tp_k_head_num
    start = 0
    for (pk, pv), p, e in zip(prefix_kv, prefix_lens, extend_lens):
        nk = k[start : start + e].view(e, Hkv, HEAD_DIM)
        nv = v[start : start + e].view(e, Hkv, HEAD_DIM)
        ref = dense_reference(
            q[start : start + e].view(e, H, HEAD_DIM), torch.cat((pk, nk)), torch.cat((pv, nv)), p, layer.scaling
        )
        got = out[start : start + e].view(e, H, HEAD_DIM).double()
        assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5), (p, e, (got - ref).abs().max())
        start += e


@pytest.mark.parametrize("gqa", [1, 2, 4])
@pytest.mark.parametrize("save_kv_cache", [True, False])
def test_extend_with_prefix_matches_dense(gqa, save_kv_cache):
    prefix_lens, extend_lens = [0, 7, 1, 20], [5, 9, 1, 3]
    layer, fb, q, k, v, prefix_kv = _setup(gqa, prefix_lens, extend_lens, seed=gqa, mode=ForwardMode.EXTEND)
    out = fb.attn_backend.forward(q, k, v, layer, fb, save_kv_cache=save_kv_cache)
    assert out.shape == q.shape
    _check(layer, fb, q, k, v, prefix_kv, out, prefix_lens, extend_lens)
    k_buf, v_buf = fb.token_to_kv_pool.get_kv_buffer(1)
    written = torch.equal(k_buf[fb.out_cache_loc], k.view(-1, KV_HEADS, HEAD_DIM))
    assert written == save_kv_cache
    if save_kv_cache:
        assert torch.equal(v_buf[fb.out_cache_loc], v.view(-1, KV_HEADS, HEAD_DIM))


@pytest.mark.parametrize("gqa", [1, 2, 4])
@pytest.mark.parametrize("save_kv_cache", [True, False])
def test_decode_matches_dense(gqa, save_kv_cache):
    prefix_lens, extend_lens = [4, 1, 30], [1, 1, 1]
    layer, fb, q, k, v, prefix_kv = _setup(gqa, prefix_lens, extend_lens, seed=10 + gqa, mode=ForwardMode.DECODE)
    out = fb.attn_backend.forward(q, k, v, layer, fb, save_kv_cache=save_kv_cache)
    _check(layer, fb, q, k, v, prefix_kv, out, prefix_lens, extend_lens)


def test_extend_without_cpu_lens_uses_tensors():
    prefix_lens, extend_lens = [3, 0], [4, 6]
    layer, fb, q, k, v, prefix_kv = _setup(2, prefix_lens, extend_lens, seed=3, mode=ForwardMode.EXTEND)
    fb.extend_prefix_lens_cpu = fb.extend_seq_lens_cpu = None
    out = fb.attn_backend.forward(q, k, v, layer, fb)
    _check(layer, fb, q, k, v, prefix_kv, out, prefix_lens, extend_lens)


@pytest.mark.parametrize("with_metadata", [True, False])
def test_decode_in_length_groups_matches_dense(with_metadata):
    # 30 requests of different lengths: the backend splits them into length groups.
    prefix_lens = [(5 * i) % 11 + (i % 3) for i in range(30)]
    extend_lens = [1] * 30
    layer, fb, q, k, v, prefix_kv = _setup(2, prefix_lens, extend_lens, seed=21, mode=ForwardMode.DECODE)
    if with_metadata:
        fb.attn_backend.init_forward_metadata(fb)
        assert len(fb.attn_metadata) > 1
    out = fb.attn_backend.forward(q, k, v, layer, fb)
    _check(layer, fb, q, k, v, prefix_kv, out, prefix_lens, extend_lens)
