"""Plumbing shared by the runtime's processes: IPC names, logging, and dying with the parent."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass
class PortArgs:
    """ZMQ ``ipc://`` endpoints in a private temp dir (mode 0700, so other users can't connect)."""

    ipc_dir: str
    scheduler_input_ipc: str
    detokenizer_ipc: str
    tokenizer_ipc: str

    @classmethod
    def new(cls) -> "PortArgs":
        d = tempfile.mkdtemp(prefix="sglite-ipc-")
        os.chmod(d, 0o700)
        return cls(d, f"ipc://{d}/scheduler", f"ipc://{d}/detokenizer", f"ipc://{d}/tokenizer")


def setup_logging(level: str, prefix: str = "") -> None:
    fmt = f"[%(asctime)s{(' ' + prefix) if prefix else ''}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt, datefmt="%H:%M:%S", force=True)


def _set_pdeathsig() -> None:
    # Linux: the kernel kills us when the parent dies, even if it was SIGKILLed.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _watch_parent(parent_pid: int) -> None:
    # Portable fallback for the prctl above: poll for re-parenting.
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(1.0)


def configure_child_process(server_args: Any, name: str) -> None:
    setup_logging(server_args.log_level, name)
    parent = os.getppid()
    _set_pdeathsig()
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()
    # Ctrl-C goes to the whole process group; the parent decides how to shut down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
