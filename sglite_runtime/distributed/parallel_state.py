"""Tiny tensor-parallel state: which rank am I, how many ranks, and the two collectives.

Layers ask ``get_tp_rank()`` / ``get_tp_size()`` when they are built, so a model built
without ``init_tp_group`` (the common single-GPU and CPU case) is a plain tp_size 1 model and
every collective here is a no-op. A multi-rank launcher calls ``init_tp_group`` once per
process after ``torch.distributed.init_process_group``.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

_TP_GROUP: dist.ProcessGroup | None = None
_TP_RANK: int = 0
_TP_SIZE: int = 1


def init_tp_group(ranks: list[int] | None = None, backend: str | None = None) -> None:
    """Make ``ranks`` (default: the whole world) this process's tensor-parallel group.

    Requires ``torch.distributed`` to be initialized. Calling it again replaces the group.
    """
    global _TP_GROUP, _TP_RANK, _TP_SIZE
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("init_tp_group needs torch.distributed.init_process_group() first")
    ranks = list(range(dist.get_world_size())) if ranks is None else list(ranks)
    group = dist.new_group(ranks, backend=backend)
    if dist.get_rank() not in ranks:
        raise RuntimeError(f"rank {dist.get_rank()} is not in the TP group {ranks}")
    _TP_GROUP = group
    _TP_RANK = ranks.index(dist.get_rank())
    _TP_SIZE = len(ranks)
    logger.info("TP group ready: rank %d of %d", _TP_RANK, _TP_SIZE)


def destroy_tp_group() -> None:
    """Forget the TP group (tests; shutdown). Layers built afterwards are tp_size 1."""
    global _TP_GROUP, _TP_RANK, _TP_SIZE
    _TP_GROUP, _TP_RANK, _TP_SIZE = None, 0, 1


def _active() -> bool:
    return _TP_GROUP is not None and dist.is_available() and dist.is_initialized()


def get_tp_group() -> dist.ProcessGroup | None:
    """The TP process group, or None when tensor parallelism is off."""
    return _TP_GROUP if _active() else None


def get_tp_rank() -> int:
    """This process's rank inside the TP group (0 when TP is off)."""
    return _TP_RANK if _active() else 0


def get_tp_size() -> int:
    """Number of TP ranks (1 when TP is off)."""
    return _TP_SIZE if _active() else 1


def tensor_model_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` over the TP ranks (in place when TP is on); identity at tp_size 1."""
    if get_tp_size() == 1:
        return x
    dist.all_reduce(x, group=_TP_GROUP)
    return x


def tensor_model_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's ``x`` along ``dim`` in rank order; identity at tp_size 1."""
    size = get_tp_size()
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous(), group=_TP_GROUP)
    return torch.cat(parts, dim=dim)
