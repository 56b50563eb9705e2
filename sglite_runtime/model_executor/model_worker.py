"""ModelWorker: one step of the model for a ScheduleBatch — forward, grammar mask, sample, logprobs.

The scheduler decides what runs; this class runs it and returns a typed ``StepResult``; the
output processor (``managers/scheduler_output.py``) turns that result into request updates and
messages. Nothing here touches request state beyond reading it, so a step can run on another
thread (overlap scheduling, ``managers/overlap_schedule.py``) while the scheduler does host work.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sglite_runtime.model_executor.forward_batch import ForwardBatch

if TYPE_CHECKING:
    from sglite_runtime.managers.schedule_batch import ScheduleBatch
    from sglite_runtime.model_executor.model_runner import ModelRunner

logger = logging.getLogger(__name__)


@dataclass
class StepResult:
    """What one forward + sample produced for a batch (row ``i`` is ``batch.reqs[i]``)."""

    next_token_ids: torch.Tensor  # [bs] int64, on the model's device
    next_token_logprobs: torch.Tensor | None  # [bs]: log-prob of each sampled token, when asked
    logits: torch.Tensor  # [bs, vocab] after penalties and grammar masks (top logprobs read it)
    # Prompt logprobs: log-softmax rows, and per request index (lo, hi, first_pos) into them.
    input_logprobs: torch.Tensor | None = None
    input_logprob_spans: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    _ids_list: list[int] | None = field(default=None, repr=False)

    def select(self, keep: list[int]) -> "StepResult":
        """The rows ``keep`` only (requests that left the batch while this step ran)."""
        idx = torch.tensor(keep, dtype=torch.int64)
        lp = self.next_token_logprobs
        out = StepResult(self.next_token_ids[idx.to(self.next_token_ids.device)],
                         None if lp is None else lp[idx.to(lp.device)], self.logits[idx.to(self.logits.device)])
        if self._ids_list is not None:
            out._ids_list = [self._ids_list[i] for i in keep]
        return out

    def next_token_ids_list(self) -> list[int]:
        """The sampled ids on the host (one device→host copy, cached)."""
        if self._ids_list is None:
            self._ids_list = self.next_token_ids.tolist()
        return self._ids_list


class ModelWorker:
    """Runs ``forward_and_sample`` for the scheduler over one ``ModelRunner``.

    Args:
        model_runner: owns the model, the KV pools and the attention backend.
        sampler: the ``layers.sampler.Sampler`` (seeded, per-request parameters).
        grammar_manager: applies constrained requests' vocabulary masks (None: no grammars).
        eos_token_ids: the model's EOS ids (min_new_tokens masks them).
    """

    def __init__(self, model_runner: "ModelRunner", sampler: Any, grammar_manager: Any,
                 eos_token_ids: set[int]):
        self.model_runner = model_runner
        self.sampler = sampler
        self.grammar_manager = grammar_manager
        self.eos_token_ids = eos_token_ids
        self.device = model_runner.device
        self.vocab_size = model_runner.vocab_size

    # ---- forward inputs ------------------------------------------------------------------
    def build_forward_batch(self, batch: "ScheduleBatch") -> ForwardBatch:
        mr = self.model_runner
        # prepare_for_extend/prepare_for_decode set them.
        assert (batch.input_ids is not None and batch.positions is not None and batch.out_cache_loc is not None
                and batch.req_pool_indices is not None and batch.seq_lens is not None)
        fb = ForwardBatch(
            forward_mode=batch.forward_mode,
            batch_size=batch.batch_size(),
            input_ids=batch.input_ids,
            positions=batch.positions,
            out_cache_loc=batch.out_cache_loc,
            req_pool_indices=batch.req_pool_indices,
            seq_lens=batch.seq_lens,
            seq_lens_cpu=batch.seq_lens_cpu,
            req_to_token_pool=mr.req_to_token_pool,
            token_to_kv_pool=mr.token_to_kv_pool,
            attn_backend=mr.attn_backend,
        )
        if batch.forward_mode.is_extend():
            dev = self.device
            ext = torch.tensor(batch.extend_lens_cpu, dtype=torch.int64, device=dev)
            fb.extend_prefix_lens = torch.tensor(batch.prefix_lens_cpu, dtype=torch.int64, device=dev)
            fb.extend_seq_lens = ext
            fb.extend_start_loc = torch.cumsum(ext, 0) - ext
            fb.extend_prefix_lens_cpu = batch.prefix_lens_cpu
            fb.extend_seq_lens_cpu = batch.extend_lens_cpu
        return fb

    # ---- one step ------------------------------------------------------------------------
    def forward_and_sample(self, batch: "ScheduleBatch") -> StepResult:
        """Forward ``batch``, mask, sample one token per request; prompt logprobs on extends."""
        hidden = self.model_runner.forward(self.build_forward_batch(batch))
        if not batch.forward_mode.is_extend():
            return self._sample(batch, self.model_runner.compute_logits(hidden))
        rows, last_rows, spans = self._extend_rows(batch)
        logits_all = self.model_runner.compute_logits(hidden[torch.tensor(rows, device=hidden.device)])
        input_lp = None
        if spans:
            input_lp = torch.log_softmax(logits_all[:, : self.vocab_size].float(), dim=-1)
        res = self._sample(batch, logits_all[torch.tensor(last_rows, device=logits_all.device)])
        res.input_logprobs, res.input_logprob_spans = input_lp, spans
        return res

    @staticmethod
    def _extend_rows(batch: "ScheduleBatch") -> tuple[list[int], list[int], dict[int, tuple[int, int, int]]]:
        """Hidden rows to project: each request's last token, plus its prompt-logprob span."""
        rows: list[int] = []
        last_rows: list[int] = []
        spans: dict[int, tuple[int, int, int]] = {}
        start = 0
        for i, r in enumerate(batch.reqs):
            p, n = batch.prefix_lens_cpu[i], batch.extend_lens_cpu[i]
            if r.wants_input_logprobs():
                first_pos = max(r.logprob_start_len - 1, p)
                lo = len(rows)
                rows.extend(range(start + first_pos - p, start + n))
                spans[i] = (lo, len(rows), first_pos)
            else:
                rows.append(start + n - 1)
            last_rows.append(len(rows) - 1)
            start += n
        return rows, last_rows, spans

    def _sample(self, batch: "ScheduleBatch", logits: torch.Tensor) -> StepResult:
        from sglite_runtime.sampling.penalties import apply_penalties
        from sglite_runtime.sampling.sampling_batch_info import SamplingBatchInfo

        if batch.sampling_info is None:
            batch.sampling_info = SamplingBatchInfo.from_reqs(
                batch.reqs, self.vocab_size, self.device, eos_token_ids=sorted(self.eos_token_ids))
        info = batch.sampling_info
        if logits.shape[-1] > self.vocab_size:
            logits = logits[:, : self.vocab_size]
        if logits.is_inference():
            # Penalties and grammar masks update logits in place, which torch forbids on
            # inference tensors outside inference mode: work on a normal copy.
            logits = logits.clone()
        apply_penalties(logits, info)
        if self.grammar_manager is not None:
            self.grammar_manager.apply_mask(batch.reqs, logits)
        out = self.sampler(logits, info)
        keep = None
        if batch.forward_mode.is_extend() and any(r.is_chunked for r in batch.reqs):
            keep = torch.tensor([not r.is_chunked for r in batch.reqs], device=logits.device)
        info.cumulate_output_tokens(out.next_token_ids, keep)
        # The host copies are made here, on the worker: with overlap scheduling a copy made on
        # the scheduler's thread would wait (on a GPU stream) for the next step's kernels too.
        lp = out.next_token_logprobs
        res = StepResult(out.next_token_ids, None if lp is None else lp.cpu(), logits)
        res.next_token_ids_list()
        return res
