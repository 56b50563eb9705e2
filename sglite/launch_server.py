"""``python -m sglite.launch_server --model-path … --host … --port …`` (also the ``sglite-server`` script).

The runtime (and torch) is imported only when the server actually starts, so ``--help`` is fast.
When started by ``sglite.launch_server()`` (env ``SGLITE_PARENT_PID``), the server watches that
process and stops itself (SIGTERM: drain, then exit) once it is gone, so a killed notebook
kernel or a crashed script never leaves a server behind.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

PARENT_PID_ENV = "SGLITE_PARENT_PID"
PARENT_POLL_S = 0.5
# After SIGTERM the server drains for --graceful-timeout; this is the hard stop on top of that.
HARD_STOP_EXTRA_S = 15.0


def _watch_parent(parent_pid: int, grace_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    if os.getpgrp() == os.getpid():  # we lead our group (launch_server starts a new session)
        os.killpg(os.getpgrp(), signal.SIGKILL)
    os._exit(1)


def watch_parent_from_env(grace_s: float) -> None:
    """Start the parent-death watch if ``launch_server()`` asked for it (the variable is consumed,
    so the processes this server starts, e.g. DP replicas, do not inherit it)."""
    value = os.environ.pop(PARENT_PID_ENV, None)
    if not value:
        return
    parent = int(value)
    if os.getppid() != parent:  # the parent died before we got here
        sys.exit(1)
    threading.Thread(target=_watch_parent, args=(parent, grace_s), daemon=True, name="sglite-parent-watch").start()


def main(argv: list[str] | None = None) -> None:
    """Parse SGLang-style flags and run the HTTP server until it is stopped."""
    from sglite_runtime.entrypoints.http_server import launch_server
    from sglite_runtime.server_args import prepare_server_args

    server_args = prepare_server_args(sys.argv[1:] if argv is None else argv)
    watch_parent_from_env(float(server_args.graceful_timeout) + HARD_STOP_EXTRA_S)
    if server_args.dp_size > 1:  # N replicas behind sglang-router, on this port
        from sglite_runtime.entrypoints.dp_launcher import launch_dp

        return launch_dp(server_args)
    if server_args.node_rank > 0:  # multi-node TP: this node runs its scheduler ranks only
        from sglite_runtime.entrypoints.scheduler_process import run_worker_node

        return run_worker_node(server_args)
    launch_server(server_args)


if __name__ == "__main__":
    main()
