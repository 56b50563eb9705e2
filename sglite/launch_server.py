"""``python -m sglite.launch_server --model-path … --host … --port …`` (also the ``sglite-server`` script).

The runtime (and torch) is imported only when the server actually starts, so ``--help`` is fast.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    """Parse SGLang-style flags and run the HTTP server until it is stopped."""
    from sglite_runtime.entrypoints.http_server import launch_server
    from sglite_runtime.server_args import prepare_server_args

    server_args = prepare_server_args(sys.argv[1:] if argv is None else argv)
    if server_args.dp_size > 1:  # N replicas behind sglang-router, on this port
        from sglite_runtime.entrypoints.dp_launcher import launch_dp

        return launch_dp(server_args)
    if server_args.node_rank > 0:  # multi-node TP: this node runs its scheduler ranks only
        from sglite_runtime.distributed.tp_worker import run_worker_node

        return run_worker_node(server_args)
    launch_server(server_args)


if __name__ == "__main__":
    main()
