"""Sampler: greedy / temperature / top-k / top-p / min-p with deterministic per-request noise.

Per step the caller does::

    apply_penalties(logits, info)            # sampling/penalties.py (in place)
    grammar_backend.apply_vocab_mask(logits, mask)   # constrained requests only
    out = sampler(logits, info)              # SampleOutput
    info.cumulate_output_tokens(out.next_token_ids)

Seeding: sampling is an exponential race, ``argmax_j p_j / E_j`` with ``E_j ~ Exp(1)``, which
picks token j with probability exactly p_j (equivalent to Gumbel-max). ``E_j`` comes from an
integer hash of (request seed, step, token id), computed for the whole batch at once, so a
request draws the same token in any batch, at any row, on any device, and the TP ranks agree
without communication.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator

import torch

from sglite_runtime.sampling.penalties import apply_penalties
from sglite_runtime.sampling.sampling_batch_info import SamplingBatchInfo

__all__ = ["Sampler", "SampleOutput", "apply_penalties", "seeded_uniform"]

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------- hashing
# 32-bit hashing carried out in int64 tensors. Every value is kept in [0, 2**32) by explicit
# masks, and products are split into 16-bit halves so no intermediate exceeds 2**49: int64
# never overflows, hence the result is identical on every backend.

_M32 = 0xFFFF_FFFF
_GOLDEN = 0x9E37_79B1


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    """``(a * c) mod 2**32`` for ``a`` in [0, 2**32) and a constant ``c`` < 2**32."""
    lo = a & 0xFFFF
    hi = a >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _M32


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """MurmurHash3's 32-bit finalizer: a bijection with full avalanche."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EB_CA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2_AE35)
    return h ^ (h >> 16)


def _row_keys(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One 32-bit key per row from the 64-bit seed and the step."""
    lo = seeds & _M32
    hi = (seeds >> 32) & _M32  # arithmetic shift, then mask: the seed's upper 32 bits
    k = _fmix32(lo ^ 0x9E37_79B9)
    k = _fmix32(k ^ hi)
    return _fmix32((k + _mul32(steps & _M32, _GOLDEN)) & _M32)


def _token_hash(keys: torch.Tensor, token_term: torch.Tensor) -> torch.Tensor:
    # Additive key then a full mix: rows with different keys see unrelated streams.
    return _fmix32((keys.view(-1, 1) + token_term.view(1, -1)) & _M32)


def seeded_uniform(seeds: torch.Tensor, steps: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Uniforms in (0, 1), ``[bs, vocab_size]`` float32, a pure function of (seed, step, token).

    Uses 23 hash bits: ``(b + 0.5) / 2**23`` is exact in float32 and never 0 or 1.
    """
    token_term = _mul32(torch.arange(vocab_size, dtype=torch.int64, device=seeds.device), _GOLDEN)
    return _bits_to_uniform(_token_hash(_row_keys(seeds, steps), token_term))


def _bits_to_uniform(h: torch.Tensor) -> torch.Tensor:
    return ((h >> 9).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


# ---------------------------------------------------------------------------- sampler


@dataclass
class SampleOutput:
    """Result of one sampling step. Iterates as ``(next_token_ids, next_token_logprobs)``."""

    next_token_ids: torch.Tensor        # [bs] int64
    # [bs] float32; None for an all-greedy batch whose requests did not ask for logprobs
    # (``info.need_token_logprobs`` False): the normalizer costs as much as the argmax.
    next_token_logprobs: torch.Tensor | None

    def __iter__(self) -> Iterator[torch.Tensor | None]:
        yield self.next_token_ids
        yield self.next_token_logprobs


class Sampler(torch.nn.Module):
    """Vectorized sampler; no Python loop over requests."""

    def __init__(self) -> None:
        super().__init__()
        self._token_term: torch.Tensor | None = None

    def _get_token_term(self, vocab_size: int, device: torch.device) -> torch.Tensor:
        t = self._token_term
        if t is None or t.numel() != vocab_size or t.device != device:
            t = _mul32(torch.arange(vocab_size, dtype=torch.int64, device=device), _GOLDEN)
            self._token_term = t
        return t

    def forward(
        self,
        logits: torch.Tensor,
        info: SamplingBatchInfo,
        steps: torch.Tensor | int | None = None,
    ) -> SampleOutput:
        """Sample one token per row of ``logits [bs, vocab]`` (penalties/mask already applied).

        Args:
            logits: float logits; not modified.
            info: the batch's SamplingBatchInfo.
            steps: noise step per row; defaults to ``info.steps`` (tokens generated so far).

        Logprobs follow SGLang: greedy rows get ``log_softmax(logits)``; sampled rows get
        ``log_softmax(logits / temperature)`` before top-k/top-p/min-p filtering, both
        gathered at the chosen token.
        """
        logits = logits.float()
        if steps is None:
            steps = info.steps
        elif not isinstance(steps, torch.Tensor):
            steps = torch.full_like(info.steps, int(steps))

        if info.is_all_greedy:
            ids = logits.argmax(dim=-1)
            if not info.need_token_logprobs:
                return SampleOutput(ids, None)
            lp = logits.gather(1, ids.view(-1, 1)).view(-1) - torch.logsumexp(logits, dim=-1)
            return SampleOutput(ids, lp)

        # Greedy rows carry temperature 1.0, so this is plain log_softmax for them.
        logprobs = torch.log_softmax(logits / info.temperatures, dim=-1)
        probs = logprobs.exp()
        probs = _filter_probs(probs, info)

        token_term = self._get_token_term(logits.shape[-1], logits.device)
        keys = _row_keys(info.seeds, steps.to(torch.int64))
        exp_noise = -torch.log(_bits_to_uniform(_token_hash(keys, token_term)))
        ids = (probs / exp_noise).argmax(dim=-1)
        if len(info) and any(f[0] for f in info.row_flags):
            ids = torch.where(info.is_greedy, logits.argmax(dim=-1), ids)

        lp = logprobs.gather(1, ids.view(-1, 1)).view(-1)
        return SampleOutput(ids, lp)


def _filter_probs(probs: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """Zero the probabilities that top-k, top-p and min-p drop (no renormalization needed:
    the exponential race is invariant to scaling a row)."""
    if info.need_top_k_sampling or info.need_top_p_sampling:
        # Stable sort: ties break by token id, so the kept set is deterministic.
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        drop = torch.zeros_like(sorted_p, dtype=torch.bool)
        if info.need_top_k_sampling:
            ranks = torch.arange(probs.shape[-1], device=probs.device).view(1, -1)
            drop |= ranks >= info.top_ks.view(-1, 1)
        if info.need_top_p_sampling:
            # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
            drop |= (sorted_p.cumsum(dim=-1) - sorted_p) > info.top_ps.view(-1, 1)
        probs = probs.masked_fill(torch.empty_like(drop).scatter_(1, order, drop), 0.0)
    if info.need_min_p_sampling:
        # The top token survives top-k/top-p, so the max is unchanged by the steps above.
        threshold = probs.max(dim=-1, keepdim=True).values * info.min_ps.view(-1, 1)
        probs = probs.masked_fill(probs < threshold, 0.0)
    return probs
