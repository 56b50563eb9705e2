"""Logprob helpers: output logprobs, top logprobs, chosen-token logprobs, input logprobs.

The model computes logits (``model.compute_logits``); these pure tensor functions turn them
into the values the API returns (``output_token_logprobs``, ``output_top_logprobs``,
``input_token_logprobs``) with SGLang's semantics. Values are lists of ``(logprob, token_id)``
as the scheduler sends them to the detokenizer.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch

logger = logging.getLogger(__name__)


def compute_logprobs(logits: torch.Tensor, temperatures: torch.Tensor | None = None) -> torch.Tensor:
    """``log_softmax`` over the last dim in float32, optionally after dividing by
    ``temperatures`` (``[bs, 1]``)."""
    logits = logits.float()
    if temperatures is not None:
        logits = logits / temperatures
    return torch.log_softmax(logits, dim=-1)


def get_top_logprobs(logprobs: torch.Tensor, top_k_list: Sequence[int]) -> list[list[tuple[float, int]]]:
    """Top ``top_k_list[i]`` ``(logprob, token_id)`` pairs of row ``i``, best first.

    One ``topk`` call with the largest k and one device-to-host copy for the whole batch;
    rows asking for 0 get ``[]``.
    """
    if len(top_k_list) != logprobs.shape[0]:
        raise ValueError(f"top_k_list has {len(top_k_list)} entries for {logprobs.shape[0]} rows")
    max_k = min(max(top_k_list, default=0), logprobs.shape[-1])
    if max_k <= 0:
        return [[] for _ in top_k_list]
    values, indices = logprobs.topk(max_k, dim=-1)  # sorted, largest first
    values, indices = values.tolist(), indices.tolist()
    return [list(zip(values[i][:k], indices[i][:k])) for i, k in enumerate(top_k_list)]


def get_token_logprobs(logprobs: torch.Tensor, token_ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
    """Logprobs of given tokens: ``token_ids [bs]`` → ``[bs]``; ``[bs, n]`` → ``[bs, n]``."""
    ids = torch.as_tensor(token_ids, dtype=torch.int64, device=logprobs.device)
    if ids.dim() == 1:
        return logprobs.gather(1, ids.view(-1, 1)).view(-1)
    return logprobs.gather(1, ids)


def get_input_token_logprobs(
    logits_rows: torch.Tensor, ids: Sequence[int], start: int = 0
) -> list[tuple[float | None, int]]:
    """Logprobs of a prompt's own tokens (``input_token_logprobs``), SGLang-aligned.

    Args:
        logits_rows: ``[m, vocab]`` logits at positions ``start .. L-1`` of the prompt, i.e.
            ``m == L - start`` (row ``r`` predicts the token at position ``start + r + 1``).
        ids: the prompt token ids, length ``L``.
        start: ``logprob_start_len``; ``0 <= start < L``.

    Returns:
        ``m`` pairs ``(logprob, ids[j])`` for ``j = start .. L-1``. The pair for token ``j``
        uses the logits at position ``j - 1``, i.e. ``logits_rows[j - 1 - start]``. The first
        pair (``j == start``) is ``(None, ids[start])``: for ``start == 0`` the first token
        has no prefix, and for ``start > 0`` its predicting logits (position ``start - 1``)
        are not among the rows, matching SGLang where the first input logprob is null. The
        last row (position ``L-1``) predicts the first output token and is unused here.
    """
    L = len(ids)
    if not 0 <= start < L:
        raise ValueError(f"start must be in [0, {L}), got {start}")
    m = L - start
    if logits_rows.shape[0] != m:
        raise ValueError(f"expected {m} logits rows for positions {start}..{L - 1}, got {logits_rows.shape[0]}")
    out: list[tuple[float | None, int]] = [(None, int(ids[start]))]
    if m == 1:
        return out
    targets = torch.as_tensor(list(ids[start + 1:]), dtype=torch.int64, device=logits_rows.device)
    lp = compute_logprobs(logits_rows[:-1]).gather(1, targets.view(-1, 1)).view(-1).tolist()
    out.extend(zip(lp, (int(t) for t in ids[start + 1:])))
    return out


def get_input_top_logprobs(
    logits_rows: torch.Tensor, top_k: int
) -> list[list[tuple[float, int]] | None]:
    """``input_top_logprobs`` aligned like :func:`get_input_token_logprobs`: entry 0 is None,
    entry ``r > 0`` holds the top ``top_k`` of ``logits_rows[r - 1]``."""
    m = logits_rows.shape[0]
    if m <= 1:
        return [None] * m
    lp = compute_logprobs(logits_rows[:-1])
    return [None] + get_top_logprobs(lp, [top_k] * (m - 1))
