"""Tensor-parallel primitives for the scheduler: rank layout, process groups, lockstep messaging.

The process entry points are in ``entrypoints/scheduler_process.py``.

Every TP rank runs the same ``Scheduler`` over its shard of the model, in the same loop as a
single process (``managers/scheduler_loop.event_loop``). Only rank 0 owns the ZMQ sockets; each
iteration it drains its input socket and broadcasts the raw messages over a CPU (gloo) group
(``broadcast_messages``), so every rank calls ``process_input_requests`` with identical inputs
and then ``step()``. The scheduler is deterministic given its inputs (logits are all-gathered, sampling
noise is a hash of (seed, step, token)), so all ranks pick the same batches and tokens without
broadcasting any decision. Only rank 0 sends outputs.

Failure model: ``init_process_group`` gets an explicit timeout, and gloo raises at once when a
peer's socket closes, so when one rank dies the others leave their collective with an error and
exit non-zero; the launcher's watchdog then sees dead children.

Multi-node: ``--nnodes N --node-rank K --dist-init-addr host:port``. Node K runs global ranks
``K*tp/N .. (K+1)*tp/N - 1``; nodes with ``node_rank > 0`` run no HTTP server, tokenizer or
detokenizer (``entrypoints/scheduler_process.run_worker_node``).
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import socket
from typing import Any

import torch
import torch.distributed as dist

from sglite_runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)

# Per-collective timeout. Gloo fails at once on a closed peer socket, so this bounds only a
# peer that hangs (or a partitioned node); it must exceed the model-load skew between ranks.
DIST_TIMEOUT_S = float(os.environ.get("SGLITE_DIST_TIMEOUT", "300"))
_STOP_SIZE = -1  # the size rank 0 broadcasts to end every rank's loop cleanly


# ---- layout --------------------------------------------------------------------------------------
def ranks_per_node(server_args: ServerArgs) -> int:
    """TP ranks each node runs (``tp_size / nnodes``)."""
    if server_args.nnodes < 1 or server_args.tp_size % server_args.nnodes:
        raise ValueError(f"tp_size={server_args.tp_size} must be a multiple of nnodes={server_args.nnodes}")
    if not 0 <= server_args.node_rank < server_args.nnodes:
        raise ValueError(f"node_rank={server_args.node_rank} must be in [0, nnodes={server_args.nnodes})")
    return server_args.tp_size // server_args.nnodes


def local_tp_ranks(server_args: ServerArgs) -> list[int]:
    """The global TP ranks this node runs."""
    n = ranks_per_node(server_args)
    return list(range(server_args.node_rank * n, (server_args.node_rank + 1) * n))


def resolve_dist_init_addr(server_args: ServerArgs) -> str:
    """``host:port`` of rank 0's rendezvous: ``--dist-init-addr``, or a free loopback port (one node)."""
    if server_args.dist_init_addr:
        host, _, port = server_args.dist_init_addr.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--dist-init-addr must be host:port, got {server_args.dist_init_addr!r}")
        return server_args.dist_init_addr
    if server_args.nnodes > 1:
        raise ValueError("--nnodes > 1 needs --dist-init-addr host:port (rank 0's reachable address)")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def init_distributed(server_args: ServerArgs, tp_rank: int, dist_init_addr: str) -> dist.ProcessGroup:
    """Join the TP world; set up the model's TP group. Returns the CPU group for control messages.

    CUDA: NCCL carries the model's all-reduce/all-gather and a separate gloo group carries
    control. CPU: gloo for both (the world group serves as the control group).
    """
    from sglite_runtime.distributed.parallel_state import init_tp_group

    device = server_args.resolved_device()
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if device.startswith("cuda"):
        torch.cuda.set_device(tp_rank % ranks_per_node(server_args))
    timeout = datetime.timedelta(seconds=DIST_TIMEOUT_S)
    dist.init_process_group(backend=backend, init_method=f"tcp://{dist_init_addr}", rank=tp_rank,
                            world_size=server_args.tp_size, timeout=timeout)
    init_tp_group(backend=backend)
    cpu_group = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
    logger.info("TP rank %d/%d joined %s via %s", tp_rank, server_args.tp_size, backend, dist_init_addr)
    assert cpu_group is not None  # this rank belongs to the group it just created
    return cpu_group


# ---- lockstep messaging --------------------------------------------------------------------------
def broadcast_messages(frames: list[bytes] | None, group: Any, stop: bool = False) -> list[bytes] | None:
    """Rank 0's list of raw ZMQ frames, on every rank; None on every rank when rank 0 sends ``stop``.

    One int64 broadcast per iteration when there is nothing to send (the common decode step);
    a second, byte-tensor broadcast only when there are messages.
    """
    is_src = dist.get_rank() == 0
    payload = pickle.dumps(frames) if is_src and frames else b""
    size = torch.tensor([_STOP_SIZE if is_src and stop else len(payload)], dtype=torch.int64)
    dist.broadcast(size, src=0, group=group)
    n = int(size.item())
    if n == _STOP_SIZE:
        return None
    if n == 0:
        return []
    buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if is_src else torch.empty(n, dtype=torch.uint8)
    dist.broadcast(buf, src=0, group=group)
    return frames if is_src else pickle.loads(buf.numpy().tobytes())
