"""Per-batch sampling tensors, built once per batch and carried across decode steps.

The scheduler either keeps one ``SamplingBatchInfo`` alive for a running batch
(``filter`` when requests finish, ``merge`` when a prefill batch joins, and
``cumulate_output_tokens`` after every step) or rebuilds it with ``from_reqs``. Both are
exact: ``from_reqs`` reconstructs the same state from ``req.output_ids``. Keeping it is
cheaper when penalties are used (rebuilding re-scatters every output token); without
penalties rebuilding costs a few small host-to-device copies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch

from sglite_runtime.sampling.penalties import BatchedPenalizer

logger = logging.getLogger(__name__)

_SAMPLING_EPS = 1e-6

# Per-row Python flags (greedy, uses top_k, uses top_p, uses min_p), kept on the host so the
# batch-level need_* booleans can be recomputed after filter/merge without a device sync.
_RowFlags = tuple[bool, bool, bool, bool]


@dataclass
class SamplingBatchInfo:
    """Sampling state of a batch; row ``i`` belongs to ``reqs[i]`` of the ScheduleBatch."""

    temperatures: torch.Tensor  # [bs, 1] f32; greedy rows hold 1.0 (their logprobs are plain log_softmax)
    top_ps: torch.Tensor        # [bs] f32
    top_ks: torch.Tensor        # [bs] int64; -1 (disabled) becomes vocab_size
    min_ps: torch.Tensor        # [bs] f32
    is_greedy: torch.Tensor     # [bs] bool
    seeds: torch.Tensor         # [bs] int64 (two's-complement view of the 64-bit seed)
    steps: torch.Tensor         # [bs] int64: tokens generated so far = noise step
    vocab_size: int
    device: torch.device
    penalizer: BatchedPenalizer | None = None
    row_flags: list[_RowFlags] = field(default_factory=list)
    # Per row: does the request want its sampled tokens' logprobs (``return_logprob``)? Kept so
    # that an all-greedy batch where nobody asks skips the log-softmax normalizer every step.
    logprob_rows: list[bool] = field(default_factory=list)
    is_all_greedy: bool = False
    need_top_k_sampling: bool = False
    need_top_p_sampling: bool = False
    need_min_p_sampling: bool = False

    # ------------------------------------------------------------------ build

    @classmethod
    def from_reqs(cls, reqs: Sequence[Any], vocab_size: int, device: torch.device | str,
                  eos_token_ids: Iterable[int] | None = None) -> SamplingBatchInfo:
        """Build from requests exposing ``sampling_params``, ``seed``, ``output_ids`` and
        ``origin_input_ids``. ``eos_token_ids`` are masked (with each request's
        stop_token_ids) while a request has fewer than ``min_new_tokens`` outputs."""
        device = torch.device(device)
        params = [r.sampling_params for r in reqs]
        flags = [_row_flags(p, vocab_size) for p in params]
        temps, top_ps, top_ks, min_ps = [], [], [], []
        for p, f in zip(params, flags):
            temps.append([1.0 if f[0] else float(p.temperature)])
            top_ps.append(float(p.top_p))
            top_ks.append(vocab_size if p.top_k < 0 else min(int(p.top_k), vocab_size))
            min_ps.append(float(p.min_p))
        info = cls(
            temperatures=torch.tensor(temps, dtype=torch.float32, device=device).view(-1, 1),
            top_ps=torch.tensor(top_ps, dtype=torch.float32, device=device),
            top_ks=torch.tensor(top_ks, dtype=torch.int64, device=device),
            min_ps=torch.tensor(min_ps, dtype=torch.float32, device=device),
            is_greedy=torch.tensor([f[0] for f in flags], dtype=torch.bool, device=device),
            seeds=torch.tensor([_to_int64(r.seed) for r in reqs], dtype=torch.int64, device=device),
            steps=torch.tensor([len(r.output_ids) for r in reqs], dtype=torch.int64, device=device),
            vocab_size=vocab_size,
            device=device,
            penalizer=BatchedPenalizer.from_reqs(reqs, vocab_size, device, eos_token_ids),
            row_flags=flags,
            # Requests that do not say (plain objects in tests) get logprobs, as before.
            logprob_rows=[bool(getattr(r, "return_logprob", True)) for r in reqs],
        )
        info._update_flags()
        return info

    def __len__(self) -> int:
        return len(self.row_flags)

    @property
    def need_token_logprobs(self) -> bool:
        """Whether some row wants its sampled token's logprob (True when rows are not known)."""
        return len(self.logprob_rows) != len(self.row_flags) or any(self.logprob_rows)

    def _update_flags(self) -> None:
        sampled = [f for f in self.row_flags if not f[0]]
        self.is_all_greedy = not sampled
        self.need_top_k_sampling = any(f[1] for f in sampled)
        self.need_top_p_sampling = any(f[2] for f in sampled)
        self.need_min_p_sampling = any(f[3] for f in sampled)

    # ------------------------------------------------------------------ per step

    def cumulate_output_tokens(self, next_ids: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Record the tokens just sampled: ``steps += 1`` and penalty counts follow.

        ``mask [bs] bool`` (optional) marks rows whose token is kept; pass it when some rows'
        samples are discarded (e.g. a non-final prefill chunk) so their step stays put.
        """
        if mask is None:
            self.steps.add_(1)
        else:
            self.steps.add_(mask.to(torch.int64))
        if self.penalizer is not None:
            self.penalizer.cumulate_output_tokens(next_ids, mask)

    # ------------------------------------------------------------------ batch surgery

    def filter(self, keep_indices: Sequence[int] | torch.Tensor) -> None:
        """Keep only rows ``keep_indices`` (in that order), in place."""
        if isinstance(keep_indices, torch.Tensor):
            keep_list = keep_indices.tolist()
        else:
            keep_list = list(keep_indices)
        keep = torch.tensor(keep_list, dtype=torch.int64, device=self.device)
        for name in ("temperatures", "top_ps", "top_ks", "min_ps", "is_greedy", "seeds", "steps"):
            setattr(self, name, getattr(self, name)[keep])
        if self.penalizer is not None:
            self.penalizer.filter(keep, keep_list)
            if not self.penalizer.is_required() or not keep_list:
                self.penalizer = None
        if len(self.logprob_rows) == len(self.row_flags):
            self.logprob_rows = [self.logprob_rows[i] for i in keep_list]
        else:
            self.logprob_rows = []
        self.row_flags = [self.row_flags[i] for i in keep_list]
        self._update_flags()

    def merge(self, other: SamplingBatchInfo) -> None:
        """Append ``other``'s rows after ours, in place (ScheduleBatch.merge_batch order)."""
        if other.vocab_size != self.vocab_size:
            raise ValueError(f"cannot merge batches with vocab sizes {self.vocab_size} and {other.vocab_size}")
        self.penalizer = BatchedPenalizer.merge(self.penalizer, len(self), other.penalizer, len(other),
                                                self.vocab_size, self.device)
        for name in ("temperatures", "top_ps", "top_ks", "min_ps", "is_greedy", "seeds", "steps"):
            setattr(self, name, torch.cat([getattr(self, name), getattr(other, name)]))
        known = len(self.logprob_rows) == len(self.row_flags) and len(other.logprob_rows) == len(other.row_flags)
        self.logprob_rows = self.logprob_rows + other.logprob_rows if known else []
        self.row_flags = self.row_flags + other.row_flags
        self._update_flags()


def _row_flags(p: Any, vocab_size: int) -> _RowFlags:
    # Do not rely on normalize() having run: derive greedy from the raw values too.
    greedy = bool(getattr(p, "is_greedy", False)) or p.temperature < _SAMPLING_EPS or p.top_k == 1
    return (greedy, 0 < p.top_k < vocab_size, p.top_p < 1.0, p.min_p > 0.0)


def _to_int64(seed: int | None) -> int:
    """Map any Python int to the int64 with the same low 64 bits."""
    if seed is None:
        # The scheduler always assigns one; 0 keeps a stray None request deterministic.
        logger.warning("request without a seed; using 0")
        seed = 0
    s = int(seed) & 0xFFFF_FFFF_FFFF_FFFF
    return s - (1 << 64) if s >= (1 << 63) else s
