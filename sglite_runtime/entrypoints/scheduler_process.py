"""Scheduler process entry points: one process (``run_scheduler_process``), one TP rank
(``run_tp_scheduler_process``), and a node other than 0 of a multi-node group
(``run_worker_node``). Both scheduler entries run the same loop
(``managers/scheduler_loop.event_loop``); they differ only in how they start and how they die.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import Any

import torch

from sglite_runtime.distributed.tp_worker import (
    broadcast_messages,
    init_distributed,
    local_tp_ranks,
    ranks_per_node,
)
from sglite_runtime.managers.scheduler import Scheduler
from sglite_runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)


def run_scheduler_process(server_args: ServerArgs, port_args: Any, pipe_writer: Any, tp_rank: int = 0) -> None:
    """Process entry: PULL requests from the tokenizer manager, run batches, PUSH outputs."""
    import traceback

    from sglite_runtime.entrypoints.process_utils import configure_child_process
    from sglite_runtime.managers.io_struct import SchedulerReady, encode
    from sglite_runtime.managers.scheduler_loop import SchedulerIO, event_loop
    from sglite_runtime.managers.watchdog import StepWatchdog

    configure_child_process(server_args, f"scheduler TP{tp_rank}")
    try:
        scheduler = Scheduler(server_args, tp_rank)
    except Exception as e:
        pipe_writer.send({"status": "error", "message": f"scheduler failed to start: {e!r}\n{traceback.format_exc()}"})
        raise
    io = SchedulerIO(port_args)
    ready = SchedulerReady(scheduler.max_total_num_tokens, scheduler.max_running_requests,
                           scheduler.context_len, scheduler.vocab_size)
    pipe_writer.send({"status": "ready", "info": encode(ready)})
    StepWatchdog(scheduler, server_args.watchdog_timeout).start()
    try:
        event_loop(scheduler, io)
    except BaseException:
        # An error no request can be blamed for (or a kill signal): exit non-zero at once, even
        # with non-daemon threads alive (a grammar compile), so the server sees a dead child
        # (/health 503, exit 1) instead of a live process that never answers.
        logger.critical("scheduler crashed; exiting", exc_info=True)
        for h in logging.getLogger().handlers:
            h.flush()
        os._exit(1)


def run_tp_scheduler_process(server_args: ServerArgs, port_args: Any, pipe_writer: Any, tp_rank: int,
                             dist_init_addr: str) -> None:
    """Process entry for TP rank ``tp_rank``: join the group, build the scheduler, loop.

    Reports ``{"status": "ready"}`` (rank 0 adds the ``SchedulerReady`` info) on ``pipe_writer``,
    or ``{"status": "error"}``. Exits with code 1 when the loop fails (e.g. a peer rank died).
    """
    import traceback

    from sglite_runtime.entrypoints.process_utils import configure_child_process
    from sglite_runtime.managers.io_struct import SchedulerReady, encode
    from sglite_runtime.managers.scheduler_loop import SchedulerIO, event_loop

    configure_child_process(server_args, f"scheduler TP{tp_rank}")
    try:
        cpu_group = init_distributed(server_args, tp_rank, dist_init_addr)
        scheduler = Scheduler(server_args, tp_rank)
        if scheduler.device == "cpu" and not server_args.num_threads:
            # Ranks on one host share its cores: cap the model runner's choice at this rank's share.
            share = max(1, (os.cpu_count() or 1) // ranks_per_node(server_args))
            torch.set_num_threads(min(torch.get_num_threads(), share))
        io = SchedulerIO(port_args) if tp_rank == 0 else None
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
        event_loop(scheduler, io, lambda frames: broadcast_messages(frames, cpu_group, stop=stop.is_set()))
        logger.info("TP rank %d: stop from rank 0", tp_rank)
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
