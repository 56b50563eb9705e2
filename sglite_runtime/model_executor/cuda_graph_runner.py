"""CUDA graphs for decode: capture one graph per batch size, pad real batches up to one.

A 1B-model decode step is ~0.8 ms of GPU work but ~200 kernel launches, so without graphs
Python and launch overhead dominate (perf-anchors §5). Decode is the only mode captured: its
shapes depend on the batch size alone.

How it works:

* Static device buffers of ``max_bs`` rows: ``input_ids``, ``positions``, ``out_cache_loc``,
  ``req_pool_indices``, ``seq_lens``. One ``ForwardBatch`` per captured size views their first
  ``bs`` rows, and the graph is captured against those views.
* ``replay`` copies the real batch into the first rows and fills the rest with dummy rows: token
  0 at position 0, written to KV slot 0 (the pool's dummy slot, never handed out), attending
  through a reserved ``req_to_token`` row that stays all zeros with ``seq_len`` 1. Padding can
  therefore never touch a real request's KV.
* Attention metadata is prepared outside the graph. Only backends whose decode reads
  everything from the batch tensors (``supports_cuda_graph = True``, e.g. the Triton backend)
  are captured; for others ``can_run`` is False and the caller runs eagerly.

What it needs from ``model_runner`` (the lead wires these):

* ``.model``, ``.req_to_token_pool`` (``ReqToTokenPool``), ``.token_to_kv_pool``
  (``MHATokenToKVPool``), ``.attn_backend`` and ``.device``;
* ``.forward_decode_raw(forward_batch) -> Tensor``: the model on a DECODE batch **without**
  calling ``attn_backend.init_forward_metadata`` (that happens outside the graph), returning a
  tensor whose first dimension is the batch (logits ``[bs, vocab]`` or hidden ``[bs, h]``);
* optionally ``.server_args.cuda_graph_max_bs`` (else pass ``max_bs``).
"""

from __future__ import annotations

import bisect
import logging
from typing import Any

import torch

from sglite_runtime.model_executor.forward_batch import ForwardBatch, ForwardMode

logger = logging.getLogger(__name__)


def capture_batch_sizes(max_bs: int) -> list[int]:
    """1, 2, 4, then every multiple of 8 up to ``max_bs`` (``max_bs`` itself always included)."""
    if max_bs < 1:
        raise ValueError(f"cuda_graph_max_bs must be >= 1, got {max_bs}")
    sizes = [s for s in (1, 2, 4) if s <= max_bs] + list(range(8, max_bs + 1, 8))
    if sizes[-1] != max_bs:
        sizes.append(max_bs)
    return sizes


class CudaGraphRunner:
    """Captured decode graphs of ``model_runner`` for batch sizes up to ``max_bs``.

    Args:
        model_runner: see the module docstring for the attributes used.
        max_bs: largest captured batch; defaults to ``server_args.cuda_graph_max_bs``.
        capture: False builds the buffers only and ``replay`` runs the padded batch eagerly;
            that is how the padding logic is tested without a GPU.
    """

    def __init__(self, model_runner: Any, max_bs: int | None = None, capture: bool = True):
        self.model_runner = model_runner
        self.attn_backend = model_runner.attn_backend
        self.device = torch.device(model_runner.device)
        if max_bs is None:
            max_bs = getattr(getattr(model_runner, "server_args", None), "cuda_graph_max_bs", 64)
        rows = model_runner.req_to_token_pool.size
        self.batch_sizes = capture_batch_sizes(max_bs)
        self.max_bs = self.batch_sizes[-1]
        self.enabled = bool(getattr(self.attn_backend, "supports_cuda_graph", False))
        if not self.enabled:
            logger.warning("attention backend %s cannot be captured in CUDA graphs; decode runs eagerly",
                           type(self.attn_backend).__name__)  # fmt: skip
        if self.max_bs >= rows:
            logger.warning("cuda_graph_max_bs %d exceeds the %d request rows; batches that large never occur",
                           self.max_bs, rows)  # fmt: skip

        # A request row reserved for padding: never freed, kept all zeros, so a dummy query reads
        # slot 0 only. Taken from the pool so the scheduler can never hand it out.
        got = model_runner.req_to_token_pool.reserve()
        if got is None:
            raise RuntimeError("no free req_to_token row left for the CUDA-graph padding row")
        self.dummy_row = got
        model_runner.req_to_token_pool.req_to_token[self.dummy_row].zero_()

        n, dev, i64 = self.max_bs, self.device, torch.int64
        self.input_ids = torch.zeros(n, dtype=i64, device=dev)
        self.positions = torch.zeros(n, dtype=i64, device=dev)
        self.out_cache_loc = torch.zeros(n, dtype=i64, device=dev)  # slot 0: the dummy slot
        self.req_pool_indices = torch.full((n,), self.dummy_row, dtype=i64, device=dev)
        self.seq_lens = torch.ones(n, dtype=i64, device=dev)

        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self.batches: dict[int, ForwardBatch] = {bs: self._static_batch(bs, [1] * bs) for bs in self.batch_sizes}
        if capture and self.enabled:
            self.capture()

    # ---- setup ----------------------------------------------------------------------------
    def _static_batch(self, bs: int, seq_lens_cpu: list[int]) -> ForwardBatch:
        mr = self.model_runner
        return ForwardBatch(
            forward_mode=ForwardMode.DECODE,
            batch_size=bs,
            input_ids=self.input_ids[:bs],
            positions=self.positions[:bs],
            out_cache_loc=self.out_cache_loc[:bs],
            req_pool_indices=self.req_pool_indices[:bs],
            seq_lens=self.seq_lens[:bs],
            seq_lens_cpu=seq_lens_cpu,
            req_to_token_pool=mr.req_to_token_pool,
            token_to_kv_pool=mr.token_to_kv_pool,
            attn_backend=self.attn_backend,
        )

    @torch.inference_mode()
    def capture(self) -> None:
        """Capture every size, largest first, so smaller graphs reuse the largest one's memory pool."""
        pool = None
        stream = torch.cuda.Stream(device=self.device)
        for bs in reversed(self.batch_sizes):
            fb = self.batches[bs]
            self.attn_backend.init_forward_metadata(fb)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm up: autotuning, lazy inits and allocator growth stay out of the graph
                    self.model_runner.forward_decode_raw(fb)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool, stream=stream):
                out = self.model_runner.forward_decode_raw(fb)
            pool = graph.pool()
            self.graphs[bs] = graph
            self.outputs[bs] = out
        torch.cuda.synchronize(self.device)
        logger.info("captured decode CUDA graphs for batch sizes %s", self.batch_sizes)

    # ---- use ------------------------------------------------------------------------------
    def can_run(self, forward_batch: ForwardBatch) -> bool:
        """A DECODE batch of at most ``max_bs`` rows on this runner's pools and backend."""
        fb = forward_batch
        return (
            self.enabled
            and fb.forward_mode.is_decode()
            and 0 < fb.batch_size <= self.max_bs
            and fb.token_to_kv_pool is self.model_runner.token_to_kv_pool
            and fb.attn_backend is self.attn_backend
        )

    def padded_size(self, bs: int) -> int:
        """The smallest captured batch size >= ``bs``."""
        return self.batch_sizes[bisect.bisect_left(self.batch_sizes, bs)]

    def _load(self, fb: ForwardBatch) -> int:
        """Copy the batch into the static buffers, pad the rest with dummy rows; returns the padded size."""
        raw = fb.batch_size
        bs = self.padded_size(raw)
        self.input_ids[:raw].copy_(fb.input_ids)
        self.positions[:raw].copy_(fb.positions)
        self.out_cache_loc[:raw].copy_(fb.out_cache_loc)
        self.req_pool_indices[:raw].copy_(fb.req_pool_indices)
        self.seq_lens[:raw].copy_(fb.seq_lens)
        if bs > raw:
            self.input_ids[raw:bs].zero_()
            self.positions[raw:bs].zero_()
            self.out_cache_loc[raw:bs].zero_()
            self.req_pool_indices[raw:bs].fill_(self.dummy_row)
            self.seq_lens[raw:bs].fill_(1)
        return bs

    def replay(self, forward_batch: ForwardBatch) -> torch.Tensor:
        """Run the decode batch through its graph; returns the first ``batch_size`` output rows.

        The result is a view of the graph's static output: consume (sample / copy) it before the
        next replay.
        """
        fb = forward_batch
        raw = fb.batch_size
        bs = self._load(fb)
        static_fb = self.batches[bs]
        if bs not in self.graphs:
            # Eager path (capture=False): run the padded batch as the graph would.
            static_fb.seq_lens_cpu = list(fb.seq_lens_cpu) + [1] * (bs - raw)
            static_fb.attn_metadata = None
            self.attn_backend.init_forward_metadata(static_fb)
            with torch.inference_mode():
                return self.model_runner.forward_decode_raw(static_fb)[:raw]
        # A backend may refresh graph-owned metadata buffers here (outside the graph).
        refresh = getattr(self.attn_backend, "init_forward_metadata_replay_cuda_graph", None)
        if refresh is not None:
            refresh(static_fb, raw)
        self.graphs[bs].replay()
        return self.outputs[bs][:raw]
