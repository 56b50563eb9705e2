"""Vocabulary-parallel token embedding and LM head.

The vocabulary is padded up to a multiple of ``tp_size`` and split into contiguous row
ranges, one per rank. The embedding looks up only the ids in its own range (others give 0)
and all-reduces; the head computes logits for its own rows and all-gathers, then drops the
padding. At tp_size 1 there is no padding and both are plain.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sglite_runtime.distributed import (
    get_tp_rank,
    get_tp_size,
    tensor_model_parallel_all_gather,
    tensor_model_parallel_all_reduce,
)


class VocabParallelEmbedding(nn.Module):
    """Rows ``[vocab_start, vocab_end)`` of the ``[num_embeddings, embedding_dim]`` table."""

    def __init__(self, num_embeddings: int, embedding_dim: int, params_dtype: torch.dtype | None = None):
        super().__init__()
        self.tp_rank = get_tp_rank()
        self.tp_size = get_tp_size()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.num_embeddings_padded = -(-num_embeddings // self.tp_size) * self.tp_size
        self.num_per_rank = self.num_embeddings_padded // self.tp_size
        self.vocab_start = self.tp_rank * self.num_per_rank
        self.vocab_end = self.vocab_start + self.num_per_rank
        dtype = params_dtype or torch.get_default_dtype()
        self.weight = nn.Parameter(torch.empty(self.num_per_rank, embedding_dim, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]  # loader hook on the Parameter

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        """Copy this rank's rows of the full ``[vocab, dim]`` checkpoint table; zero the padding."""
        if loaded_weight.shape != (self.num_embeddings, self.embedding_dim):
            raise ValueError(
                f"{type(self).__name__}: checkpoint has shape {tuple(loaded_weight.shape)}, "
                f"expected {(self.num_embeddings, self.embedding_dim)}"
            )
        n = max(0, min(self.vocab_end, self.num_embeddings) - self.vocab_start)
        param.data[:n].copy_(loaded_weight[self.vocab_start : self.vocab_start + n])
        param.data[n:].zero_()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        in_range = (input_ids >= self.vocab_start) & (input_ids < self.vocab_end)
        local = torch.where(in_range, input_ids - self.vocab_start, torch.zeros_like(input_ids))
        out = F.embedding(local, self.weight)
        out = out * in_range.unsqueeze(-1).to(out.dtype)
        return tensor_model_parallel_all_reduce(out)

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, dim={self.embedding_dim}, per_rank={self.num_per_rank}"


def vocab_parallel_logits(table: VocabParallelEmbedding, hidden: torch.Tensor) -> torch.Tensor:
    """Logits against a vocab-parallel table (an ``LMHead`` or, when tied, the embedding).

    The matmul runs in the model dtype, like HF's ``lm_head``; only the result is upcast.
    """
    logits = F.linear(hidden, table.weight)
    logits = tensor_model_parallel_all_gather(logits, dim=-1)
    return logits[..., : table.num_embeddings].float()


class ParallelLMHead(VocabParallelEmbedding):
    """The output projection; shares its weight with the embedding when embeddings are tied."""

    def __init__(self, num_embeddings: int, embedding_dim: int, params_dtype: torch.dtype | None = None):
        super().__init__(num_embeddings, embedding_dim, params_dtype)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``[n, hidden]`` → float32 ``[n, num_embeddings]`` (full vocabulary on every rank)."""
        return vocab_parallel_logits(self, hidden)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # pragma: no cover - guard
        raise RuntimeError("ParallelLMHead is not an embedding; call compute_logits(hidden)")
