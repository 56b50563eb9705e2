"""Batched logit penalties: frequency/presence, repetition, min_new_tokens, logit_bias.

All state is per batch row and every step is a handful of whole-batch tensor ops; there is
no Python loop over requests after the state is built. Features nobody in the batch uses
hold no state and cost nothing.

State per feature (``bs`` rows, ``V`` vocab):
- frequency/presence: penalties ``[bs, 1]`` and output-token counts ``[bs, V]`` float32;
- repetition: penalty ``[bs, 1]`` and a seen mask ``[bs, V]`` bool over input + output ids;
- min_new_tokens: sparse (row, token, threshold) entries for EOS and stop_token_ids;
- logit_bias: sparse (row, token, bias) entries.

The caller (model runner / scheduler) invokes ``apply_penalties(logits, info)`` before the
grammar mask and before ``Sampler``; after sampling it calls
``info.cumulate_output_tokens(next_ids)`` so the counts follow the new tokens.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import torch

if TYPE_CHECKING:
    from sglite_runtime.sampling.sampling_batch_info import SamplingBatchInfo

logger = logging.getLogger(__name__)


class _SparseEntries:
    """(row, col, value) triples that follow batch rows through filter/merge."""

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor) -> None:
        self.rows, self.cols, self.vals = rows, cols, vals

    @classmethod
    def build(cls, triples: list[tuple[int, int, float]], val_dtype: torch.dtype,
              device: torch.device | str) -> _SparseEntries | None:
        if not triples:
            return None
        rows, cols, vals = zip(*triples)
        return cls(torch.tensor(rows, dtype=torch.int64, device=device),
                   torch.tensor(cols, dtype=torch.int64, device=device),
                   torch.tensor(vals, dtype=val_dtype, device=device))

    def filter(self, new_index_of_old: torch.Tensor) -> _SparseEntries | None:
        new_rows = new_index_of_old[self.rows]
        keep = new_rows >= 0
        return _SparseEntries(new_rows[keep], self.cols[keep], self.vals[keep])

    @staticmethod
    def merge(a: _SparseEntries | None, b: _SparseEntries | None, bs_a: int) -> _SparseEntries | None:
        if a is None and b is None:
            return None
        if b is None:
            return a
        shifted = _SparseEntries(b.rows + bs_a, b.cols, b.vals)
        if a is None:
            return shifted
        return _SparseEntries(torch.cat([a.rows, shifted.rows]), torch.cat([a.cols, shifted.cols]),
                              torch.cat([a.vals, shifted.vals]))


class BatchedPenalizer:
    """Penalty state for one batch. Build with :meth:`from_reqs`; None-valued fields are off."""

    def __init__(self, bs: int, vocab_size: int, device: torch.device | str) -> None:
        self.bs = bs
        self.vocab_size = vocab_size
        self.device = torch.device(device)
        self.frequency_penalties: torch.Tensor | None = None   # [bs, 1] f32
        self.presence_penalties: torch.Tensor | None = None    # [bs, 1] f32
        self.output_counts: torch.Tensor | None = None         # [bs, V] f32
        self.repetition_penalties: torch.Tensor | None = None  # [bs, 1] f32
        self.seen_mask: torch.Tensor | None = None             # [bs, V] bool
        self.min_new_tokens: _SparseEntries | None = None      # (row, stop id, min_new_tokens)
        self.logit_bias: _SparseEntries | None = None          # (row, token id, bias)
        # Host-side per-row "uses frequency/presence" and "uses repetition" flags, so filter()
        # can drop a dense feature no remaining row needs without a device sync.
        self.uses_freq_pres: list[bool] = [False] * bs
        self.uses_repetition: list[bool] = [False] * bs

    # ------------------------------------------------------------------ build

    @classmethod
    def from_reqs(cls, reqs: Sequence[Any], vocab_size: int, device: torch.device | str,
                  eos_token_ids: Iterable[int] | None = None) -> BatchedPenalizer | None:
        """State for ``reqs`` (reads sampling_params, origin_input_ids, output_ids).

        Returns None when no request uses any penalty.
        """
        params = [r.sampling_params for r in reqs]
        bs = len(reqs)
        eos = sorted({int(t) for t in (eos_token_ids or ())})
        pen = cls(bs, vocab_size, device)
        pen.uses_freq_pres = [p.frequency_penalty != 0.0 or p.presence_penalty != 0.0 for p in params]
        pen.uses_repetition = [p.repetition_penalty != 1.0 for p in params]

        if any(pen.uses_freq_pres):
            pen.frequency_penalties = torch.tensor(
                [[float(p.frequency_penalty)] for p in params], dtype=torch.float32, device=device)
            pen.presence_penalties = torch.tensor(
                [[float(p.presence_penalty)] for p in params], dtype=torch.float32, device=device)
            pen.output_counts = torch.zeros(bs, vocab_size, dtype=torch.float32, device=device)
            rows, cols = _flatten([r.output_ids for r in reqs], device)
            if rows.numel():
                pen.output_counts.index_put_((rows, cols), torch.ones_like(rows, dtype=torch.float32),
                                             accumulate=True)

        if any(pen.uses_repetition):
            pen.repetition_penalties = torch.tensor(
                [[float(p.repetition_penalty)] for p in params], dtype=torch.float32, device=device)
            pen.seen_mask = torch.zeros(bs, vocab_size, dtype=torch.bool, device=device)
            rows, cols = _flatten([list(r.origin_input_ids) + list(r.output_ids) for r in reqs], device)
            if rows.numel():
                pen.seen_mask[rows, cols] = True

        triples: list[tuple[int, int, float]] = []
        for i, p in enumerate(params):
            if p.min_new_tokens > 0:
                for t in sorted(set(eos) | set(p.stop_token_ids or ())):
                    triples.append((i, t, p.min_new_tokens))
        pen.min_new_tokens = _SparseEntries.build(triples, torch.int64, device)

        bias_triples = [(i, t, b) for i, p in enumerate(params) for t, b in p.logit_bias_items()]
        pen.logit_bias = _SparseEntries.build(bias_triples, torch.float32, device)

        return pen if pen.is_required() else None

    def is_required(self) -> bool:
        return any(x is not None for x in (self.frequency_penalties, self.repetition_penalties,
                                           self.min_new_tokens, self.logit_bias))

    # ------------------------------------------------------------------ per step

    def apply(self, logits: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
        """Apply penalties in place to ``logits [bs, V]``; ``steps[i]`` = tokens generated so far.

        Order: repetition, frequency/presence, logit_bias, then min_new_tokens last so that
        nothing can lift a masked stop id back from -inf.
        """
        if self.repetition_penalties is not None:
            assert self.seen_mask is not None  # allocated together with repetition_penalties
            pen = torch.where(self.seen_mask, self.repetition_penalties, 1.0)
            logits.copy_(torch.where(logits > 0, logits / pen, logits * pen))
        if self.frequency_penalties is not None:
            # allocated together with frequency_penalties
            assert self.output_counts is not None and self.presence_penalties is not None
            logits.sub_(self.output_counts * self.frequency_penalties
                        + (self.output_counts > 0).float() * self.presence_penalties)
        if self.logit_bias is not None:
            lb = self.logit_bias
            logits.index_put_((lb.rows, lb.cols), lb.vals.to(logits.dtype), accumulate=True)
        if self.min_new_tokens is not None:
            mn = self.min_new_tokens
            active = steps[mn.rows] < mn.vals
            cur = logits[mn.rows, mn.cols]
            # index_put_ with duplicates is fine here: duplicate (row, col) pairs write the same value.
            logits.index_put_((mn.rows, mn.cols),
                              torch.where(active, torch.full_like(cur, float("-inf")), cur))
        return logits

    def cumulate_output_tokens(self, next_ids: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Count ``next_ids [bs]`` as generated; rows where ``mask`` is False are skipped."""
        ids = next_ids.view(-1, 1).to(torch.int64)
        if self.output_counts is not None:
            src = (torch.ones_like(ids, dtype=torch.float32) if mask is None
                   else mask.view(-1, 1).to(torch.float32))
            self.output_counts.scatter_add_(1, ids, src)
        if self.seen_mask is not None:
            if mask is None:
                self.seen_mask.scatter_(1, ids, True)
            else:
                cur = self.seen_mask.gather(1, ids)
                self.seen_mask.scatter_(1, ids, cur | mask.view(-1, 1).to(torch.bool))

    # ------------------------------------------------------------------ batch surgery

    def filter(self, keep: torch.Tensor, keep_list: list[int]) -> None:
        """Keep rows ``keep`` (int64 on device, in the new order; ``keep_list`` its host copy)."""
        self.uses_freq_pres = [self.uses_freq_pres[i] for i in keep_list]
        self.uses_repetition = [self.uses_repetition[i] for i in keep_list]
        if not any(self.uses_freq_pres):
            self.frequency_penalties = self.presence_penalties = self.output_counts = None
        if not any(self.uses_repetition):
            self.repetition_penalties = self.seen_mask = None
        for name in ("frequency_penalties", "presence_penalties", "output_counts",
                     "repetition_penalties", "seen_mask"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t[keep])
        if self.min_new_tokens is not None or self.logit_bias is not None:
            new_index = torch.full((self.bs,), -1, dtype=torch.int64, device=self.device)
            new_index[keep] = torch.arange(keep.numel(), device=self.device)
            if self.min_new_tokens is not None:
                self.min_new_tokens = self.min_new_tokens.filter(new_index)
            if self.logit_bias is not None:
                self.logit_bias = self.logit_bias.filter(new_index)
            # The boolean-mask filter above already synced, so numel() is free here.
            if self.min_new_tokens is not None and self.min_new_tokens.rows.numel() == 0:
                self.min_new_tokens = None
            if self.logit_bias is not None and self.logit_bias.rows.numel() == 0:
                self.logit_bias = None
        self.bs = int(keep.numel())

    @classmethod
    def merge(cls, a: BatchedPenalizer | None, bs_a: int, b: BatchedPenalizer | None, bs_b: int,
              vocab_size: int, device: torch.device | str) -> BatchedPenalizer | None:
        """Rows of ``a`` then rows of ``b``. A side without a feature gets neutral rows
        (penalty 0 / 1, empty counts) — exact, since neutral rows never read their counts."""
        if a is None and b is None:
            return None
        a = a or cls(bs_a, vocab_size, device)
        b = b or cls(bs_b, vocab_size, device)
        out = cls(bs_a + bs_b, vocab_size, device)

        def cat(x: torch.Tensor | None, y: torch.Tensor | None, n_x: int, n_y: int,
                width: int, fill: float, dtype: torch.dtype) -> torch.Tensor | None:
            if x is None and y is None:
                return None
            if x is None:
                x = torch.full((n_x, width), fill, dtype=dtype, device=device)
            if y is None:
                y = torch.full((n_y, width), fill, dtype=dtype, device=device)
            return torch.cat([x, y])

        f32 = torch.float32
        out.frequency_penalties = cat(a.frequency_penalties, b.frequency_penalties, bs_a, bs_b, 1, 0.0, f32)
        out.presence_penalties = cat(a.presence_penalties, b.presence_penalties, bs_a, bs_b, 1, 0.0, f32)
        out.output_counts = cat(a.output_counts, b.output_counts, bs_a, bs_b, vocab_size, 0.0, f32)
        out.repetition_penalties = cat(a.repetition_penalties, b.repetition_penalties, bs_a, bs_b, 1, 1.0, f32)
        out.seen_mask = cat(a.seen_mask, b.seen_mask, bs_a, bs_b, vocab_size, False, torch.bool)
        out.min_new_tokens = _SparseEntries.merge(a.min_new_tokens, b.min_new_tokens, bs_a)
        out.logit_bias = _SparseEntries.merge(a.logit_bias, b.logit_bias, bs_a)
        out.uses_freq_pres = a.uses_freq_pres + b.uses_freq_pres
        out.uses_repetition = a.uses_repetition + b.uses_repetition
        return out


def apply_penalties(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """Apply the batch's penalties to ``logits [bs, V]`` in place (no-op without any).

    Call order per step: ``apply_penalties`` → grammar vocab mask → ``Sampler`` →
    ``info.cumulate_output_tokens(next_ids)``.
    """
    if info.penalizer is not None:
        info.penalizer.apply(logits, info.steps)
    return logits


def _flatten(id_lists: list[Sequence[int]], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column index tensors for a ragged list of token id lists (one copy to device)."""
    rows: list[int] = []
    cols: list[int] = []
    for i, ids in enumerate(id_lists):
        rows.extend([i] * len(ids))
        cols.extend(ids)
    return (torch.tensor(rows, dtype=torch.int64, device=device),
            torch.tensor(cols, dtype=torch.int64, device=device))
