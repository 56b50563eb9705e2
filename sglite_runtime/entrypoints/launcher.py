"""Starting the runtime's processes: the scheduler and the detokenizer, as spawned children.

``launch_subprocesses`` is shared by ``sglite.Engine`` and the HTTP server, so both run the
same code path: TokenizerManager in the caller's process, scheduler and detokenizer in
children that exit with their parent.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
import time
from dataclasses import dataclass
from typing import Any

from sglite_runtime.entrypoints.process_utils import PortArgs
from sglite_runtime.managers.io_struct import SchedulerReady, decode
from sglite_runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT = 600.0


@dataclass
class RuntimeProcesses:
    port_args: PortArgs
    procs: list[Any]
    ready: SchedulerReady

    def alive(self) -> bool:
        return all(p.is_alive() for p in self.procs)

    def dead_children(self) -> list[str]:
        return [p.name for p in self.procs if not p.is_alive()]

    def shutdown(self, timeout: float = 5.0) -> None:
        for p in self.procs:
            if p.is_alive():
                p.terminate()
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(deadline - time.monotonic(), 0.1))
            if p.is_alive():
                p.kill()
                p.join(1.0)
        shutil.rmtree(self.port_args.ipc_dir, ignore_errors=True)


def _wait_ready(name: str, proc: Any, reader: Any, others: list[Any]) -> dict:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if reader.poll(0.2):
            msg = reader.recv()
            if msg.get("status") != "ready":
                raise RuntimeError(msg.get("message", f"{name} failed to start"))
            return msg
        if not proc.is_alive():
            raise RuntimeError(f"{name} process exited with code {proc.exitcode} during startup")
    raise RuntimeError(f"{name} did not become ready within {STARTUP_TIMEOUT:.0f} s")


def launch_subprocesses(server_args: ServerArgs) -> RuntimeProcesses:
    """Spawn the scheduler and detokenizer; return once both are ready (or raise)."""
    from sglite_runtime.managers.detokenizer_manager import run_detokenizer_process
    from sglite_runtime.managers.scheduler import run_scheduler_process

    port_args = PortArgs.new()
    ctx = mp.get_context("spawn")
    procs, readers = [], []
    for name, target in (("scheduler", run_scheduler_process), ("detokenizer", run_detokenizer_process)):
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=target, args=(server_args, port_args, writer), name=f"sglite-{name}", daemon=True)
        p.start()
        procs.append(p)
        readers.append(reader)
    try:
        sched_msg = _wait_ready("scheduler", procs[0], readers[0], procs)
        _wait_ready("detokenizer", procs[1], readers[1], procs)
    except BaseException:
        RuntimeProcesses(port_args, procs, None).shutdown()  # type: ignore[arg-type]
        raise
    ready = decode(sched_msg["info"])
    logger.info("runtime ready: %d KV tokens, max %d running requests, context %d",
                ready.max_total_num_tokens, ready.max_running_requests, ready.context_len)
    return RuntimeProcesses(port_args, procs, ready)
