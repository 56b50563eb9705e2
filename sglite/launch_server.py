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
    launch_server(server_args)


if __name__ == "__main__":
    main()
