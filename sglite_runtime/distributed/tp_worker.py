"""Tensor-parallel scheduler processes: one per rank, kept in lockstep by rank 0.

Every TP rank runs the same ``Scheduler`` over its shard of the model. Only rank 0 owns the
ZMQ sockets; each iteration it drains its input socket and broadcasts the raw messages over a
CPU (gloo) group, so every rank calls ``process_input_requests`` with identical inputs and then
``step()``. The scheduler is deterministic given its inputs (logits are all-gathered, sampling
noise is a hash of (seed, step, token)), so all ranks pick the same batches and tokens without
broadcasting any decision. Only rank 0 sends outputs.

Failure model: ``init_process_group`` gets an explicit timeout, and gloo raises at once when a
peer's socket closes, so when one rank dies the others leave their collective with an error and
exit non-zero; the launcher's watchdog then sees dead children.

Multi-node: ``--nnodes N --node-rank K --dist-init-addr host:port``. Node K runs global ranks
``K*tp/N .. (K+1)*tp/N - 1``; nodes with ``node_rank > 0`` run no HTTP server, tokenizer or
detokenizer (``run_worker_node``).
"""

from __future__ import annotations

import datetime
import logging
import os
import pickle
import signal
import socket
import threading
from typing import Any

import torch
import torch.distributed as dist

from sglite_runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)

# Per-collective timeout. Gloo fails at once on a closed peer socket, so this bounds only a
# peer that hangs (or a partitioned node); it must exceed the model-load skew between ranks.
DIST_TIMEOUT_S = float(os.environ.get("SGLITE_DIST_TIMEOUT", "300"))
IDLE_POLL_MS = 1000
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


class _Rank0IO:
    """Rank 0's sockets, the same three as the single-process scheduler loop."""

    def __init__(self, port_args: Any):
        import zmq

        self._zmq = zmq
        ctx = zmq.Context(2)
        self.recv = ctx.socket(zmq.PULL)
        self.recv.bind(port_args.scheduler_input_ipc)
        self.to_detok = ctx.socket(zmq.PUSH)
        self.to_detok.connect(port_args.detokenizer_ipc)
        self.to_tokenizer = ctx.socket(zmq.PUSH)
        self.to_tokenizer.connect(port_args.tokenizer_ipc)

    def drain(self, timeout_ms: int) -> list[bytes]:
        frames: list[bytes] = []
        if self.recv.poll(timeout_ms):
            while True:
                try:
                    frames.append(self.recv.recv(self._zmq.NOBLOCK))
                except self._zmq.Again:
                    break
        return frames


def tp_event_loop(scheduler: Any, io: _Rank0IO | None, cpu_group: Any, stop: threading.Event | None = None) -> None:
    """Run in lockstep with the other ranks until rank 0's ``stop`` is set; raises on a collective error."""
    from sglite_runtime.managers.io_struct import decode, encode

    idle_checked = True
    while True:
        frames = None
        if io is not None:
            # Block only when idle, so a running batch never waits on the socket. The other
            # ranks wait in the broadcast meanwhile, which is cheap.
            frames = io.drain(0 if scheduler.has_work() else IDLE_POLL_MS)
        frames = broadcast_messages(frames, cpu_group, stop=stop is not None and stop.is_set())
        if frames is None:
            logger.info("TP rank %d: stop from rank 0", dist.get_rank())
            return
        replies = scheduler.process_input_requests([decode(f) for f in frames])
        ran = scheduler.step()
        outputs = scheduler.drain_outputs()
        if io is not None:
            for reply in replies:
                io.to_tokenizer.send(encode(reply))
            for out in outputs:
                io.to_detok.send(encode(out))
        if ran:
            idle_checked = False
        elif not scheduler.has_work() and not idle_checked:
            idle_checked = True
            try:
                scheduler.check_memory()
            except RuntimeError as e:
                logger.error("%s", e)


def run_tp_scheduler_process(server_args: ServerArgs, port_args: Any, pipe_writer: Any, tp_rank: int,
                             dist_init_addr: str) -> None:
    """Process entry for TP rank ``tp_rank``: join the group, build the scheduler, loop.

    Reports ``{"status": "ready"}`` (rank 0 adds the ``SchedulerReady`` info) on ``pipe_writer``,
    or ``{"status": "error"}``. Exits with code 1 when the loop fails (e.g. a peer rank died).
    """
    import traceback

    from sglite_runtime.entrypoints.process_utils import configure_child_process
    from sglite_runtime.managers.io_struct import SchedulerReady, encode
    from sglite_runtime.managers.scheduler import Scheduler

    configure_child_process(server_args, f"scheduler TP{tp_rank}")
    try:
        cpu_group = init_distributed(server_args, tp_rank, dist_init_addr)
        scheduler = Scheduler(server_args, tp_rank)
        if scheduler.device == "cpu" and not server_args.num_threads:
            # Ranks on one host share its cores: cap the model runner's choice at this rank's share.
            share = max(1, (os.cpu_count() or 1) // ranks_per_node(server_args))
            torch.set_num_threads(min(torch.get_num_threads(), share))
        io = _Rank0IO(port_args) if tp_rank == 0 else None
    except Exception as e:
        pipe_writer.send({"status": "error", "message": f"TP rank {tp_rank} failed to start: {e!r}\n"
                                                        f"{traceback.format_exc()}"})
        _hard_exit(1)
    msg: dict[str, Any] = {"status": "ready"}
    if tp_rank == 0:
        msg["info"] = encode(SchedulerReady(scheduler.max_total_num_tokens, scheduler.max_running_requests,
                                            scheduler.context_len, scheduler.vocab_size))
    stop = threading.Event()
    if tp_rank == 0:
        # SIGTERM on rank 0 (the head shutting down) ends the other ranks too, with exit 0, at
        # the next iteration; other ranks keep the default SIGTERM (die at once).
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    pipe_writer.send(msg)
    from sglite_runtime.managers.watchdog import StepWatchdog

    StepWatchdog(scheduler, server_args.watchdog_timeout, f"scheduler TP{tp_rank}").start()
    try:
        tp_event_loop(scheduler, io, cpu_group, stop)
    except Exception:
        logger.exception("TP rank %d: scheduler loop failed (a peer rank may have died); exiting", tp_rank)
        _hard_exit(1)
    _hard_exit(0)


def _hard_exit(code: int) -> None:
    # os._exit: a dead peer can leave gloo/NCCL and ZMQ teardown blocked; the parent only needs
    # the exit code.
    logging.shutdown()
    os._exit(code)


# ---- nodes other than 0 --------------------------------------------------------------------------
def run_worker_node(server_args: ServerArgs) -> None:
    """``--node-rank > 0``: run this node's TP ranks only (no HTTP, tokenizer or detokenizer).

    Returns never: exits 0 on SIGTERM/SIGINT or when rank 0 stops the group cleanly (the head
    node shut down), 1 when a rank fails (the whole TP group is then gone).
    """
    from sglite_runtime.entrypoints.launcher import launch_subprocesses
    from sglite_runtime.entrypoints.process_utils import setup_logging

    setup_logging(server_args.log_level)
    procs = launch_subprocesses(server_args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logger.info("node %d: TP ranks %s ready; waiting for rank 0 at %s", server_args.node_rank,
                local_tp_ranks(server_args), server_args.dist_init_addr)
    code = 0
    while not stop.wait(1.0):
        if not procs.alive():
            codes = [p.exitcode for p in procs.procs]
            code = 0 if all(c == 0 for c in codes) else 1
            (logger.info if code == 0 else logger.error)("TP ranks exited with codes %s", codes)
            break
    procs.shutdown()
    raise SystemExit(code)
