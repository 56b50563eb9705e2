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


# One knob for sglite's verbosity: Engine(log_level=...) / --log-level, else this variable.
LOG_LEVEL_ENV = "SGLITE_LOG_LEVEL"
LIBRARY_LOGGERS = ("sglite", "sglite_runtime")


def _level(level: str) -> int:
    value = logging.getLevelName(str(level).upper())
    if not isinstance(value, int):
        raise ValueError(f"log_level must be one of debug, info, warning, error, critical; got {level!r}")
    return value


def set_log_level(level: str) -> None:
    """Set the level of sglite's own loggers in this process; handlers and the root logger are
    the application's and are left alone (records propagate to them as usual)."""
    value = _level(level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(value)


def setup_logging(level: str, prefix: str = "") -> None:
    """Configure the root logger. Only for processes sglite owns (the server, its workers, the
    engine's workers); never called in an application's process."""
    fmt = f"[%(asctime)s{(' ' + prefix) if prefix else ''}] %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=_level(level), format=fmt, datefmt="%H:%M:%S", force=True)


def validate_model_path(model_path: str) -> None:
    """A path-like model_path (absolute, ``./``, ``../``, ``~``) must exist: it is never a Hub id."""
    if not isinstance(model_path, (str, os.PathLike)):
        raise ValueError(f"model_path must be a folder path or a Hub id, got {type(model_path).__name__}")
    path = os.fspath(model_path)
    looks_local = os.path.isabs(path) or path.startswith(("./", "../", "~", ".\\", "..\\"))
    if looks_local and not os.path.exists(os.path.expanduser(path)):
        raise ValueError(f"model_path {path!r} does not exist (a local folder path; Hub ids look like 'org/name')")


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
