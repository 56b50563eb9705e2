"""TritonAttnBackend (and, on GPUs, FlashInferAttnBackend) vs TorchNativeAttnBackend.

Both backends see the same ForwardBatches through a request's life: a first extend from an
empty prefix, a second extend on top of the cached prefix (chunked prefill / radix hit), then
decode steps. Each backend writes its own KV pool; outputs and pool contents must agree.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="triton is not installed")

from sglite_runtime.attention.base import AttentionBackend  # noqa: E402
from sglite_runtime.attention.torch_native import TorchNativeAttnBackend  # noqa: E402
from sglite_runtime.attention.triton_backend import TritonAttnBackend  # noqa: E402
from sglite_runtime.layers.radix_attention import RadixAttention  # noqa: E402
from sglite_runtime.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool, TokenToKVPoolAllocator  # noqa: E402
from sglite_runtime.model_executor.forward_batch import ForwardBatch, ForwardMode  # noqa: E402


class _Harness:
    """One request table and allocator, one KV pool per backend, and a step driver."""

    def __init__(self, backends: dict[str, AttentionBackend], h, kvh, d, page, dtype, device, seed=0):
        self.g = torch.Generator().manual_seed(seed)
        self.backends, self.dtype, self.device = backends, dtype, device
        self.layer = RadixAttention(h, d, d**-0.5, kvh, layer_id=1)  # layer 1 of 2: checks layer indexing
        self.r2t = ReqToTokenPool(6, 512, device)
        self.alloc = TokenToKVPoolAllocator(1024, page, device)
        # Shuffled free pages, so requests' pages are scattered like after a while of serving.
        perm = torch.randperm(self.alloc.free_pages.numel(), generator=self.g).to(device)
        self.alloc.free_pages = self.alloc.free_pages[perm]
        self.pools = {name: MHATokenToKVPool(1024, page, dtype, kvh, d, 2, device) for name in backends}
        self.rows: list[int] = []
        self.lens: list[int] = []

    def _rand(self, *shape) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g).to(self.dtype).to(self.device)

    def _last_locs(self) -> list[int]:
        return [int(self.r2t.req_to_token[r, n - 1]) if n else -1 for r, n in zip(self.rows, self.lens)]

    def step(self, mode: ForwardMode, new: list[int], save_kv_cache: bool = True) -> dict[str, torch.Tensor]:
        """Run one forward adding ``new[i]`` tokens to request ``i`` on every backend."""
        if not self.rows:
            self.rows = self.r2t.alloc(len(new))
            self.lens = [0] * len(new)
        prefix, seq = list(self.lens), [p + n for p, n in zip(self.lens, new)]
        if mode.is_decode():
            loc = self.alloc.alloc_decode(seq, self._last_locs())
        else:
            loc = self.alloc.alloc_extend(prefix, seq, self._last_locs())
        cursor = 0
        for r, p, s in zip(self.rows, prefix, seq):
            self.r2t.req_to_token[r, p:s] = loc[cursor : cursor + s - p].to(torch.int32)
            cursor += s - p
        n, lay = sum(new), self.layer
        # Strided views of one fused qkv tensor, as a model's QKV projection hands them over.
        sizes = [x * lay.head_dim for x in (lay.tp_q_head_num, lay.tp_k_head_num, lay.tp_v_head_num)]
        q, k, v = self._rand(n, sum(sizes)).split(sizes, dim=-1)
        dev = self.device
        ext = torch.tensor(new, dtype=torch.int64, device=dev)
        outs = {}
        for name, backend in self.backends.items():
            fb = ForwardBatch(
                forward_mode=mode,
                batch_size=len(new),
                input_ids=torch.zeros(n, dtype=torch.int64, device=dev),
                positions=torch.cat([torch.arange(p, s) for p, s in zip(prefix, seq)]).to(dev),
                out_cache_loc=loc,
                req_pool_indices=torch.tensor(self.rows, dtype=torch.int64, device=dev),
                seq_lens=torch.tensor(seq, dtype=torch.int64, device=dev),
                seq_lens_cpu=seq,
                req_to_token_pool=self.r2t,
                token_to_kv_pool=self.pools[name],
                attn_backend=backend,
            )
            if mode.is_extend():
                fb.extend_prefix_lens = torch.tensor(prefix, dtype=torch.int64, device=dev)
                fb.extend_seq_lens = ext
                fb.extend_start_loc = torch.cumsum(ext, 0) - ext
                fb.extend_prefix_lens_cpu, fb.extend_seq_lens_cpu = prefix, new
            backend.init_forward_metadata(fb)
            outs[name] = backend.forward(q, k, v, lay, fb, save_kv_cache=save_kv_cache)
            assert outs[name].shape == q.shape
        if save_kv_cache:
            self.lens = seq
        else:
            # Forget the unsaved tokens (their slots are simply not reused; freeing a slot of a
            # partly used page would free the whole page).
            for r, p, s in zip(self.rows, prefix, seq):
                self.r2t.req_to_token[r, p:s] = 0
        return outs


def _max_err(outs: dict[str, torch.Tensor], ref: str = "torch_native") -> float:
    return max((o.float() - outs[ref].float()).abs().max().item() for o in outs.values())


@pytest.mark.parametrize("h,kvh,d,page", [(4, 2, 64, 1), (4, 1, 128, 16)])
def test_triton_backend_matches_torch_native(h: int, kvh: int, d: int, page: int) -> None:
    hs = _Harness(
        {"torch_native": TorchNativeAttnBackend(), "triton": TritonAttnBackend(num_kv_splits=4)},
        h, kvh, d, page, torch.float32, "cpu",
    )  # fmt: skip
    assert _max_err(hs.step(ForwardMode.EXTEND, [7, 30, 1])) <= 1e-4  # empty prefixes
    assert _max_err(hs.step(ForwardMode.EXTEND, [5, 1, 40])) <= 1e-4  # on top of cached prefixes
    assert _max_err(hs.step(ForwardMode.DECODE, [1, 1, 1])) <= 1e-4
    # Not storing K/V must still attend over the new token (read from k/v, not the pool).
    assert _max_err(hs.step(ForwardMode.DECODE, [1, 1, 1], save_kv_cache=False)) <= 1e-4
    assert _max_err(hs.step(ForwardMode.EXTEND, [3, 2, 1], save_kv_cache=False)) <= 1e-4
    assert _max_err(hs.step(ForwardMode.DECODE, [1, 1, 1])) <= 1e-4
    ref_k, ref_v = hs.pools["torch_native"].get_kv_buffer(1)
    k, v = hs.pools["triton"].get_kv_buffer(1)
    assert torch.equal(k, ref_k) and torch.equal(v, ref_v)


def test_factory_picks_backends() -> None:
    from sglite_runtime.attention import create_attention_backend, resolve_attention_backend_name

    assert resolve_attention_backend_name("auto", "cpu") == "torch_native"
    assert isinstance(create_attention_backend("auto", "cpu"), TorchNativeAttnBackend)
    assert isinstance(create_attention_backend("triton", "cpu"), TritonAttnBackend)
    with pytest.raises(ValueError):
        create_attention_backend("nope", "cpu")


def test_flashinfer_backend_import_guard() -> None:
    from sglite_runtime.attention import flashinfer_backend

    if flashinfer_backend.flashinfer is None:
        with pytest.raises(ImportError, match=r"sglite\[gpu\]"):
            flashinfer_backend.FlashInferAttnBackend("cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("page", [1, 16])
def test_gpu_backends_match_torch_native_bf16(page: int) -> None:
    backends: dict[str, AttentionBackend] = {"torch_native": TorchNativeAttnBackend(), "triton": TritonAttnBackend()}
    from sglite_runtime.attention.flashinfer_backend import FlashInferAttnBackend, flashinfer_available

    if flashinfer_available():
        backends["flashinfer"] = FlashInferAttnBackend("cuda")
    hs = _Harness(backends, 32, 8, 64, page, torch.bfloat16, "cuda")
    assert _max_err(hs.step(ForwardMode.EXTEND, [70, 300, 1, 5])) <= 2e-2
    assert _max_err(hs.step(ForwardMode.EXTEND, [9, 1, 128, 40])) <= 2e-2
    for _ in range(3):
        assert _max_err(hs.step(ForwardMode.DECODE, [1, 1, 1, 1])) <= 2e-2
