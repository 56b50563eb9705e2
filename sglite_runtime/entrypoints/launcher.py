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
        dead = [o for o in others if o is not proc and not o.is_alive()]
        if dead:  # e.g. a TP peer: this one would otherwise wait in its rendezvous until timeout
            raise RuntimeError(f"{dead[0].name} exited with code {dead[0].exitcode} during startup")
    raise RuntimeError(f"{name} did not become ready within {STARTUP_TIMEOUT:.0f} s")


def launch_subprocesses(server_args: ServerArgs) -> RuntimeProcesses:
    """Spawn the scheduler(s) and detokenizer; return once all are ready (or raise).

    With ``tp_size > 1`` this node's TP ranks each get a scheduler process (rank 0 owns the
    sockets, see ``distributed/tp_worker.py``); all of them are in ``procs`` so a watchdog sees
    any dead rank. Nodes with ``node_rank > 0`` run only their ranks: ``ready`` is then None.
    """
    from sglite_runtime.entrypoints.detokenizer_process import run_detokenizer_process
    from sglite_runtime.entrypoints.scheduler_process import run_scheduler_process, run_tp_scheduler_process
    from sglite_runtime.utils.hf_utils import resolve_model_path

    # A Hub id is downloaded (or found in the cache) here, once, with a progress bar, so a bad id
    # or an uncached offline model fails before any child starts; children find it cached.
    resolve_model_path(server_args.model_path, server_args.revision)
    assert server_args.tokenizer_path is not None  # ServerArgs.__post_init__ defaults it
    if server_args.tokenizer_path != server_args.model_path:
        resolve_model_path(server_args.tokenizer_path, server_args.revision)
    port_args = PortArgs.new()
    ctx = mp.get_context("spawn")
    procs, readers, names = [], [], []

    def spawn(name: str, target: Any, *extra: Any) -> None:
        reader, writer = ctx.Pipe(duplex=False)
        p = ctx.Process(target=target, args=(server_args, port_args, writer, *extra), name=f"sglite-{name}",
                        daemon=True)
        p.start()
        procs.append(p)
        readers.append(reader)
        names.append(name)

    if server_args.tp_size > 1 or server_args.nnodes > 1:
        from sglite_runtime.distributed.tp_worker import local_tp_ranks, resolve_dist_init_addr

        addr = resolve_dist_init_addr(server_args)
        for rank in local_tp_ranks(server_args):
            spawn(f"scheduler-tp{rank}", run_tp_scheduler_process, rank, addr)
    else:
        spawn("scheduler", run_scheduler_process)
    if server_args.node_rank == 0:
        spawn("detokenizer", run_detokenizer_process)
    try:
        msgs = [_wait_ready(n, p, r, procs) for n, p, r in zip(names, procs, readers)]
    except BaseException:
        RuntimeProcesses(port_args, procs, None).shutdown()  # type: ignore[arg-type]
        raise
    if server_args.node_rank != 0:
        return RuntimeProcesses(port_args, procs, None)  # type: ignore[arg-type]
    ready = decode(msgs[0]["info"])
    assert isinstance(ready, SchedulerReady)  # the scheduler's first message
    logger.info("runtime ready: %d KV tokens, max %d running requests, context %d, tp %d",
                ready.max_total_num_tokens, ready.max_running_requests, ready.context_len, server_args.tp_size)
    return RuntimeProcesses(port_args, procs, ready)


# ---- launching the HTTP server as a subprocess (Python API) -------------------------------------------
# The server polls this pid and stops itself when it is gone (kernel killed, script crashed).
PARENT_PID_ENV = "SGLITE_PARENT_PID"


class ServerStartError(RuntimeError):
    """The server started by :func:`launch_server` exited or did not become ready."""


def _free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port_free(host: str, port: int) -> None:
    """Raise ``OSError(EADDRINUSE)`` when ``host:port`` cannot be bound (as uvicorn binds it)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise OSError(errno.EADDRINUSE, f"Port {port} on {host} is already in use (another server?); "
                                            f"pass another port, or port=None for a free one.") from None


def _server_cli_args(server_args: dict[str, Any]) -> list[str]:
    args: list[str] = []
    for key, value in server_args.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        args += [flag] if value is True else [flag, str(value)]
    return args


def _startup_error(log_path: str | None) -> str:
    """The server's own reason for failing: the last exception line of its log, else its last line."""
    if not log_path:
        return ""
    try:
        with open(log_path, errors="replace") as f:
            lines = [ln.strip() for ln in f.read().splitlines()[-200:] if ln.strip()]
    except OSError:
        return ""
    for ln in reversed(lines):
        head = ln.split(":", 1)[0]
        if head.endswith(("Error", "Exception")) or " ERROR " in ln:
            return ln
    return lines[-1] if lines else ""


class ServerHandle:
    """A server started by :func:`launch_server`: ``.url``, ``.port``, ``.process``, ``.log_path``, ``.shutdown()``."""

    def __init__(self, process: Any, host: str, port: int, api_key: str | None = None,
                 log_path: str | None = None):
        self.process = process
        self.host = host
        self.port = port
        self.api_key = api_key
        self.log_path = log_path
        self.url = f"http://{host}:{port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (``<url>/v1``)."""
        return self.url + "/v1"

    def shutdown(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the server drains and exits 0), then SIGKILL the group after ``timeout`` s; reaps."""
        import atexit
        import os
        import signal
        import subprocess

        p = self.process
        if p.poll() is None:
            try:
                p.send_signal(signal.SIGTERM)
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning("server %d did not stop within %.0f s; killing it", p.pid, timeout)
        if p.poll() is None:
            p.kill()
            p.wait(10)
        try:  # anything left in the server's process group (it leads its own group)
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass
        atexit.unregister(self.shutdown)  # registered by launch_server; nothing left to stop
        return p.returncode

    def __enter__(self) -> "ServerHandle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def launch_server(model_path: str | None = None, port: int | None = None, host: str = "127.0.0.1",
                  timeout: float = 300.0, log_file: Any = None, env: dict | None = None,
                  detach: bool = False, **server_args: Any) -> ServerHandle:
    """Start ``python -m sglite.launch_server`` in its own process group; wait until it serves.

    Returns once ``/health_generate`` answers 200 (a real one-token generation) from the process
    this call started. Keyword arguments are ServerArgs fields (``max_total_tokens=8192``,
    ``api_key="sk-…"``); ``port=None`` picks a free loopback port.

    The server lives as long as this process: it is stopped at interpreter exit and stops itself
    when this process dies (a killed or restarted notebook kernel), unless ``detach=True``. Its
    output goes to ``log_file`` (an open file), else to a temp file (``handle.log_path``), so it
    never lands in an unrelated notebook cell.

    Raises ``OSError`` (EADDRINUSE) at once when the port is taken, and ``ServerStartError`` with
    the server's own error when it exits or times out during startup.
    """
    import atexit
    import os
    import subprocess
    import sys
    import tempfile

    from sglite_runtime.entrypoints.process_utils import LOG_LEVEL_ENV, validate_model_path

    if server_args.get("log_level") is None and os.environ.get(LOG_LEVEL_ENV):
        server_args["log_level"] = os.environ[LOG_LEVEL_ENV].lower()
    if model_path is not None:
        validate_model_path(model_path)
        server_args["model_path"] = model_path
    if port is None:
        port = _free_port(host)
    else:
        check_port_free(host, port)
    cmd = [sys.executable, "-m", "sglite.launch_server", "--host", host, "--port", str(port)]
    cmd += _server_cli_args(server_args)
    log_path = getattr(log_file, "name", None) if log_file is not None else None
    own_log = None
    if log_file is None:
        fd, log_path = tempfile.mkstemp(prefix=f"sglite-server-{port}-", suffix=".log")
        own_log = os.fdopen(fd, "w")
    child_env = {**os.environ, **(env or {})}
    child_env.pop(PARENT_PID_ENV, None)
    if not detach:
        child_env[PARENT_PID_ENV] = str(os.getpid())
    out = log_file if log_file is not None else own_log
    try:
        proc = subprocess.Popen(cmd, start_new_session=True, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=child_env)
    finally:
        if own_log is not None:
            own_log.close()  # the child holds its own descriptor
    handle = ServerHandle(proc, host, port, server_args.get("api_key"), log_path)
    if not detach:
        atexit.register(handle.shutdown, 10.0)
    try:
        _wait_serving(handle, timeout, check_pid=int(server_args.get("dp_size") or 1) == 1)
    except BaseException:  # includes KeyboardInterrupt while waiting: leave nothing behind
        handle.shutdown(5)
        raise
    return handle


def _wait_serving(handle: ServerHandle, timeout: float, check_pid: bool) -> None:
    import requests

    proc = handle.process
    headers = {"Authorization": f"Bearer {handle.api_key}"} if handle.api_key else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            reason = _startup_error(handle.log_path)
            where = f" (log: {handle.log_path})" if handle.log_path else ""
            raise ServerStartError(f"sglite server exited with code {proc.returncode} during startup: "
                                   f"{reason or 'no output'}{where}") from None
        try:
            if requests.get(handle.url + "/health_generate", headers=headers, timeout=30).status_code == 200:
                if not check_pid:
                    return
                pid = requests.get(handle.url + "/server_info", headers=headers, timeout=30).json().get("pid")
                if pid in (proc.pid, None):  # None: a server that does not report its pid
                    return
                # Someone else answers on our port (it was taken after the check): ours will fail to bind.
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    raise ServerStartError(f"sglite server did not become healthy within {timeout:.0f} s "
                           f"(log: {handle.log_path})") from None
