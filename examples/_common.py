"""Shared plumbing for the examples: pick the backend (in-process Engine or a server URL).

Every example runs against ``sglite.Engine()`` (the shipped tiny model, in this process)
unless ``--url http://host:port`` points it at a running server, e.g. one started with::

    python -m sglite.launch_server --port 30000

The whole of it, written out by hand, is just::

    engine = sglite.Engine()                 # or: backend = sglite.RuntimeEndpoint(url)
    sglite.set_default_backend(engine)
    ...                                      # run programs
    engine.shutdown()
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from typing import Any, Iterator, Optional

# The examples are scripts: let `python examples/x.py` find `_common` and a source checkout.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import sglite  # noqa: E402


def parse_args(description: Optional[str], max_tokens: int = 32) -> argparse.Namespace:
    """The flags every example takes: ``--url``, ``--model-path`` and ``--max-tokens``."""
    parser = argparse.ArgumentParser(description=(description or "").strip().splitlines()[0])
    parser.add_argument("--url", default=None,
                        help="a running sglite/SGLang server (default: start an in-process Engine)")
    parser.add_argument("--model-path", default=None,
                        help="model folder for the in-process Engine (default: the shipped sglite-tiny)")
    parser.add_argument("--max-tokens", type=int, default=max_tokens,
                        help=f"cap on generated tokens per gen (default {max_tokens}; small = quick runs)")
    return parser.parse_args()


@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator[Any]:
    """Yield a backend (made the default one); stop the Engine, if we started it, on exit."""
    if args.url:
        try:
            backend = sglite.RuntimeEndpoint(args.url)  # fails at once if nothing serves there
        except Exception as e:
            raise SystemExit(f"cannot use the server at {args.url}: {type(e).__name__}: {e}") from None
        print(f"[backend] server at {args.url}: {backend.get_model_info().get('model_path')}")
        engine = None
    else:
        # log_level="error" keeps the runtime's processes quiet; the model loads in seconds.
        engine = sglite.Engine(model_path=args.model_path, log_level="error")
        backend = sglite.backend.as_backend(engine)
        print(f"[backend] in-process Engine: {engine.server_args.model_path}")
        if args.model_path is None:
            print("[backend] sglite-tiny (2.2M params): fluent-ish text, often wrong facts")
    sglite.set_default_backend(backend)
    try:
        yield backend
    finally:
        sglite.set_default_backend(None)
        if engine is not None:
            engine.shutdown()
        else:
            backend.shutdown()


def rule(title: str) -> None:
    """Print a section heading."""
    print(f"\n=== {title} " + "=" * max(0, 60 - len(title)))
