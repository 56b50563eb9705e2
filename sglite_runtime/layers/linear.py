"""Tensor-parallel linear layers.

Every parameter carries a ``weight_loader(param, loaded_weight, shard_id=None)`` attribute
that takes the *full* checkpoint tensor and copies this rank's slice into the parameter, so
the loader shards while it streams. At tp_size 1 each layer is a plain ``nn.Linear``.

* ``ReplicatedLinear``: the whole weight on every rank.
* ``ColumnParallelLinear``: output features split across ranks (``Y = [Y_0 .. Y_n]``).
* ``MergedColumnParallelLinear``: several column-parallel outputs fused (``gate_up_proj``).
* ``QKVParallelLinear``: q/k/v fused and split by heads; KV heads are replicated when there
  are fewer of them than ranks.
* ``RowParallelLinear``: input features split; partial outputs all-reduced.

Parameters are allocated with ``torch.empty`` (no init): real values come from the loader.
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


def _divide(a: int, b: int, what: str) -> int:
    if a % b:
        raise ValueError(f"{what}={a} is not divisible by tp_size={b}")
    return a // b


def _copy_checked(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"{name}: checkpoint slice has shape {tuple(src.shape)}, parameter expects {tuple(dst.shape)}")
    dst.copy_(src)


class LinearBase(nn.Module):
    """Owns ``weight [out_per_rank, in_per_rank]`` and an optional ``bias [out_per_rank]``."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool,
        params_dtype: torch.dtype | None,
        out_per_rank: int,
        in_per_rank: int,
    ):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.tp_rank = get_tp_rank()
        self.tp_size = get_tp_size()
        dtype = params_dtype or torch.get_default_dtype()
        self.weight = nn.Parameter(torch.empty(out_per_rank, in_per_rank, dtype=dtype), requires_grad=False)
        self.weight.weight_loader = self.weight_loader  # type: ignore[attr-defined]  # loader hook on the Parameter
        if bias:
            self.bias = nn.Parameter(torch.empty(out_per_rank, dtype=dtype), requires_grad=False)
            self.bias.weight_loader = self.weight_loader  # type: ignore[attr-defined]  # loader hook on the Parameter
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in={self.input_size}, out={self.output_size}, bias={self.bias is not None}, tp={self.tp_size}"


class ReplicatedLinear(LinearBase):
    """A full copy of the weight on every rank."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False, params_dtype: torch.dtype | None = None):
        super().__init__(input_size, output_size, bias, params_dtype, output_size, input_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        _copy_checked(param.data, loaded_weight, "ReplicatedLinear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class ColumnParallelLinear(LinearBase):
    """Output features split across ranks; ``gather_output`` all-gathers the result."""

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        gather_output: bool = False,
        params_dtype: torch.dtype | None = None,
    ):
        out_per_rank = _divide(output_size, get_tp_size(), "output_size")
        super().__init__(input_size, output_size, bias, params_dtype, out_per_rank, input_size)
        self.gather_output = gather_output

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        size = param.shape[0]
        _copy_checked(param.data, loaded_weight.narrow(0, self.tp_rank * size, size), type(self).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        return tensor_model_parallel_all_gather(out, dim=-1) if self.gather_output else out


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel projections of the same input in one matmul.

    ``output_sizes`` are the full (unsharded) widths, e.g. ``[inter, inter]`` for gate/up;
    ``shard_id`` is the index of the piece a checkpoint tensor belongs to.
    """

    def __init__(
        self,
        input_size: int,
        output_sizes: list[int],
        bias: bool = False,
        gather_output: bool = False,
        params_dtype: torch.dtype | None = None,
    ):
        self.output_sizes = list(output_sizes)
        for s in self.output_sizes:
            _divide(s, get_tp_size(), "output_sizes[i]")
        super().__init__(input_size, sum(output_sizes), bias, gather_output, params_dtype)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: int | None = None) -> None:
        if shard_id is None:
            # An already fused checkpoint tensor: split each piece by rank the same way.
            start = 0
            for i, s in enumerate(self.output_sizes):
                self.weight_loader(param, loaded_weight.narrow(0, start, s), i)
                start += s
            return
        size = self.output_sizes[shard_id] // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        src = loaded_weight.narrow(0, self.tp_rank * size, size)
        _copy_checked(param.data.narrow(0, offset, size), src, f"MergedColumnParallelLinear[{shard_id}]")


class QKVParallelLinear(ColumnParallelLinear):
    """Fused q/k/v projection split by attention heads.

    Rank ``r`` holds q heads ``[r*nh, (r+1)*nh)``. When ``total_num_kv_heads < tp_size`` each
    rank holds one KV head, shared by ``tp_size / total_num_kv_heads`` consecutive ranks.
    """

    def __init__(
        self,
        hidden_size: int,
        head_size: int,
        total_num_heads: int,
        total_num_kv_heads: int | None = None,
        bias: bool = False,
        params_dtype: torch.dtype | None = None,
    ):
        tp_size = get_tp_size()
        total_num_kv_heads = total_num_kv_heads or total_num_heads
        self.head_size = head_size
        self.total_num_heads = total_num_heads
        self.total_num_kv_heads = total_num_kv_heads
        self.num_heads = _divide(total_num_heads, tp_size, "num_attention_heads")
        if tp_size >= total_num_kv_heads:
            self.num_kv_heads = 1
            self.num_kv_head_replicas = _divide(tp_size, total_num_kv_heads, "tp_size / num_key_value_heads")
        else:
            self.num_kv_heads = _divide(total_num_kv_heads, tp_size, "num_key_value_heads")
            self.num_kv_head_replicas = 1
        self.q_size = self.num_heads * head_size  # per rank
        self.kv_size = self.num_kv_heads * head_size  # per rank
        # The parent divides output_size by tp_size, so hand it the per-rank width times tp.
        super().__init__(hidden_size, (self.q_size + 2 * self.kv_size) * tp_size, bias, False, params_dtype)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: str | None = None) -> None:
        if shard_id is None:
            q_full = self.total_num_heads * self.head_size
            kv_full = self.total_num_kv_heads * self.head_size
            for sid, start, size in (("q", 0, q_full), ("k", q_full, kv_full), ("v", q_full + kv_full, kv_full)):
                self.weight_loader(param, loaded_weight.narrow(0, start, size), sid)
            return
        if shard_id == "q":
            offset, size, rank = 0, self.q_size, self.tp_rank
        elif shard_id in ("k", "v"):
            offset = self.q_size + (0 if shard_id == "k" else self.kv_size)
            size, rank = self.kv_size, self.tp_rank // self.num_kv_head_replicas
        else:
            raise ValueError(f"QKVParallelLinear shard_id must be 'q', 'k' or 'v', got {shard_id!r}")
        src = loaded_weight.narrow(0, rank * size, size)
        _copy_checked(param.data.narrow(0, offset, size), src, f"QKVParallelLinear[{shard_id}]")


class RowParallelLinear(LinearBase):
    """Input features split across ranks; the partial products are all-reduced.

    The bias is replicated and added once, after the reduction.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
        bias: bool = False,
        reduce_results: bool = True,
        params_dtype: torch.dtype | None = None,
    ):
        in_per_rank = _divide(input_size, get_tp_size(), "input_size")
        super().__init__(input_size, output_size, bias, params_dtype, output_size, in_per_rank)
        self.reduce_results = reduce_results

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        if param.dim() == 2:
            size = param.shape[1]
            loaded_weight = loaded_weight.narrow(1, self.tp_rank * size, size)
        _copy_checked(param.data, loaded_weight, "RowParallelLinear")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight)
        if self.reduce_results:
            out = tensor_model_parallel_all_reduce(out)
        if self.bias is not None:
            out = out + self.bias
        return out
