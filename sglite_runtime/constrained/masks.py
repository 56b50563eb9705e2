"""Packed vocabulary masks: int32 rows, bit j of word w = token 32w+j (shared by the backends)."""

from __future__ import annotations

import numpy as np
import torch

from sglite_runtime.constrained.base import MASK_BITS


def num_mask_words(vocab_size: int) -> int:
    return (vocab_size + MASK_BITS - 1) // MASK_BITS


def pack_token_ids_np(token_ids: list[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """int32 bitmask row ``[ceil(V/32)]`` (numpy) with the bits of ``token_ids`` (< V) set."""
    words = num_mask_words(vocab_size)
    bits = np.zeros(words * MASK_BITS, dtype=np.uint8)
    ids = np.asarray(token_ids, dtype=np.int64)
    bits[ids[(ids >= 0) & (ids < vocab_size)]] = 1
    # Little bit order: bit j of byte k is token 8k+j; 4 little-endian bytes form one word.
    packed = np.packbits(bits, bitorder="little").view("<i4")
    return np.ascontiguousarray(packed.astype(np.int32, copy=True))


def pack_token_ids(token_ids: list[int] | np.ndarray, vocab_size: int) -> torch.Tensor:
    """int32 bitmask row ``[ceil(V/32)]`` (torch) with the bits of ``token_ids`` (< V) set."""
    return torch.from_numpy(pack_token_ids_np(token_ids, vocab_size))


class _MaskView:
    """numpy view of the most recent CPU mask tensor.

    A numpy row assignment costs ~0.4 us where ``mask[idx].copy_(row)`` costs ~5 us, and the
    scheduler fills every constrained row of the same mask each step.  Only the last mask is
    remembered (the view keeps it alive until the next one arrives)."""

    tensor: torch.Tensor | None = None
    array: np.ndarray | None = None


def mask_array(vocab_mask: torch.Tensor) -> np.ndarray | None:
    """numpy view of a contiguous CPU int32 mask (None for a device mask)."""
    if vocab_mask is not _MaskView.tensor:
        if vocab_mask.device.type != "cpu" or vocab_mask.dtype != torch.int32 or not vocab_mask.is_contiguous():
            return None
        _MaskView.tensor, _MaskView.array = vocab_mask, vocab_mask.numpy()
    return _MaskView.array


def write_row(vocab_mask: torch.Tensor, idx: int, row: np.ndarray) -> None:
    """``vocab_mask[idx] = row`` for a packed int32 row."""
    view = mask_array(vocab_mask)
    if view is None:
        vocab_mask[idx].copy_(torch.from_numpy(row), non_blocking=True)
    else:
        view[idx] = row
