"""The scheduler's process loop, one for any TP size: receive, step, send, check the pool.

Rank 0 (the only rank with a single process) owns the ZMQ sockets (``SchedulerIO``). With
tensor parallelism a ``sync`` function (``distributed/tp_worker.broadcast_messages`` over the
CPU group) hands rank 0's raw frames to every rank, so all ranks call
``process_input_requests`` with the same inputs and then ``step``; it returns None when rank 0
stops the group, which ends the loop.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

logger = logging.getLogger(__name__)

IDLE_POLL_MS = 1000  # an idle scheduler blocks on its socket this long per iteration
GRAMMAR_WAIT_MS = 5  # only grammar compiles pending: wait a little instead of spinning


class SchedulerIO:
    """Rank 0's sockets: requests in (PULL), outputs to the detokenizer and control replies to
    the tokenizer manager (PUSH)."""

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
        """Every frame waiting now, after waiting at most ``timeout_ms`` for the first."""
        frames: list[bytes] = []
        if self.recv.poll(timeout_ms):
            while True:
                try:
                    frames.append(self.recv.recv(self._zmq.NOBLOCK))
                except self._zmq.Again:
                    break
        return frames


def event_loop(scheduler: Any, io: SchedulerIO | None,
               sync: Callable[[list[bytes] | None], list[bytes] | None] | None = None) -> None:
    """Run ``scheduler`` until ``sync`` returns None (never, without TP); raises what it raises.

    Blocks on the socket only when idle, so a running batch never waits on it (the other TP
    ranks wait in the broadcast meanwhile, which is cheap). When the scheduler turns idle the
    KV pool must be whole again (``check_memory``; a leak is logged, not fatal).
    """
    from sglite_runtime.managers.io_struct import decode, encode

    idle_checked = True
    ran = False
    while True:
        frames: list[bytes] | None = None
        if io is not None:
            timeout = IDLE_POLL_MS if not scheduler.has_work() else (0 if ran else GRAMMAR_WAIT_MS)
            frames = io.drain(timeout)
        if sync is not None:
            frames = sync(frames)
            if frames is None:
                return
        replies = scheduler.process_input_requests([decode(f) for f in frames or []])
        if io is not None:
            for reply in replies:
                io.to_tokenizer.send(encode(reply))
        ran = scheduler.step()
        outputs = scheduler.drain_outputs()
        if io is not None:
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
