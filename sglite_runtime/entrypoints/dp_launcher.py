"""Data parallelism: N independent sglite servers behind the real sglang-router, on one port.

``python -m sglite.launch_server --dp-size N --port P`` is a convenience for

    python -m sglite.launch_server --port P_i ...            # N replicas on free loopback ports
    python -m sglang_router.launch_router --worker-urls http://127.0.0.1:P_1 ... --port P

Nothing here routes a request: replicas are ordinary servers (each may itself use ``--tp-size``),
and the Rust router balances them (``cache_aware`` by default: it keeps an approximate radix
tree per worker, so prompts that share a prefix land where that prefix is already cached).
The launcher only starts, watches and stops the processes: SIGTERM/SIGINT stops the router
first (no new requests) and then drains the replicas; a dead replica is dropped by the
router's health check while the others keep serving; a dead router, or no replica left, ends
the deployment with exit code 1.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from sglite_runtime.server_args import ServerArgs

logger = logging.getLogger(__name__)

ROUTER_POLICIES = ("cache_aware", "round_robin", "random", "power_of_two")
# Seconds between the router's health probes: a dead replica stops getting traffic this fast.
DEFAULT_HEALTH_CHECK_INTERVAL = 2
_ROUTER_LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warn", "error": "error", "critical": "error"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    # Runs in the child before exec: SIGTERM it (a graceful drain) if this launcher dies.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def replica_cli_args(server_args: ServerArgs, port: int) -> list[str]:
    """``sglite.launch_server`` flags for one replica: every non-default field, dp_size 1, ``port``."""
    args = ["--host", "127.0.0.1", "--port", str(port)]
    for f in dataclasses.fields(ServerArgs):
        if f.name in ("host", "port", "dp_size", "tokenizer_path", "served_model_name"):
            continue
        value = getattr(server_args, f.name)
        if value == f.default or value is None:
            continue
        flag = "--" + f.name.replace("_", "-")
        args += [flag] if value is True else [] if value is False else [flag, str(value)]
    # Derived fields only when the user changed them from what model_path implies.
    if server_args.tokenizer_path != server_args.model_path:
        args += ["--tokenizer-path", str(server_args.tokenizer_path)]
    args += ["--served-model-name", str(server_args.served_model_name)]
    return args


def _replica_env(index: int, tp_size: int) -> dict[str, str]:
    """Each replica gets its own ``tp_size`` GPUs when there are enough; on CPU nothing changes."""
    env = dict(os.environ)
    try:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        n = 0
    if n and "CUDA_VISIBLE_DEVICES" not in os.environ:
        first = index * tp_size
        if first + tp_size <= n:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in range(first, first + tp_size))
    return env


def router_cli_args(worker_urls: list[str], host: str, port: int, policy: str, log_level: str = "info",
                    health_check_interval: int = DEFAULT_HEALTH_CHECK_INTERVAL,
                    api_key: str | None = None) -> list[str]:
    """``sglang_router.launch_router`` flags for ``worker_urls``."""
    if policy not in ROUTER_POLICIES:
        raise ValueError(f"router policy must be one of {ROUTER_POLICIES}, got {policy!r}")
    args = ["--host", host, "--port", str(port), "--worker-urls", *worker_urls, "--policy", policy,
            "--health-check-interval-secs", str(health_check_interval),
            "--health-failure-threshold", "1", "--log-level", _ROUTER_LOG_LEVELS.get(log_level.lower(), "info")]
    if api_key:
        args += ["--api-key", api_key]
    return args


def _get_json(url: str, timeout: float = 5.0, headers: dict | None = None) -> Any:
    import requests

    r = requests.get(url, timeout=timeout, headers=headers or {})
    r.raise_for_status()
    return r.json()


@dataclass
class DPDeployment:
    """N replicas and a router: ``.url`` is the one address clients use."""

    url: str
    replica_urls: list[str]
    replicas: list[subprocess.Popen]
    router: subprocess.Popen | None = None

    def dead_replicas(self) -> list[int]:
        return [i for i, p in enumerate(self.replicas) if p.poll() is not None]

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the router (no new requests), then SIGTERM the replicas (they drain); kill stragglers."""
        procs = ([self.router] if self.router is not None else []) + list(self.replicas)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            if p is self.router:
                _wait(p, 5.0)
        deadline = time.monotonic() + timeout
        for p in procs:
            _wait(p, max(deadline - time.monotonic(), 0.1))
            if p.poll() is None:
                logger.warning("process %d did not stop within %.0f s; killing it", p.pid, timeout)
                p.kill()
                _wait(p, 5.0)
            try:  # a replica leads its own process group: take its scheduler/detokenizer too
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError, OSError):
                pass

    def __enter__(self) -> "DPDeployment":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()


def _wait(p: subprocess.Popen, timeout: float) -> None:
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        pass


def start_replicas(server_args: ServerArgs, n: int, log_file: Any = None) -> tuple[list[str], list[subprocess.Popen]]:
    """Start ``n`` sglite servers on free loopback ports (without waiting for them)."""
    urls, procs = [], []
    for i in range(n):
        port = free_port()
        cmd = [sys.executable, "-m", "sglite.launch_server", *replica_cli_args(server_args, port)]
        procs.append(subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent,
                                      env=_replica_env(i, server_args.tp_size), stdout=log_file,
                                      stderr=subprocess.STDOUT if log_file is not None else None))
        urls.append(f"http://127.0.0.1:{port}")
    return urls, procs


def wait_replicas(urls: list[str], procs: list[subprocess.Popen], timeout: float, api_key: str | None = None) -> None:
    """Until every replica answers ``/health_generate`` 200 (a real generation); raise if one exits."""
    import requests

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    pending = set(range(len(urls)))
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for i in sorted(pending):
            if procs[i].poll() is not None:
                raise RuntimeError(f"replica {i} ({urls[i]}) exited with code {procs[i].returncode} during startup")
            try:
                if requests.get(urls[i] + "/health_generate", timeout=30, headers=headers).status_code == 200:
                    pending.discard(i)
            except requests.RequestException:
                pass
        time.sleep(0.5)
    if pending:
        raise RuntimeError(f"replicas {sorted(pending)} not healthy within {timeout:.0f} s")


def start_router(worker_urls: list[str], host: str, port: int, policy: str = "cache_aware", log_level: str = "info",
                 health_check_interval: int = DEFAULT_HEALTH_CHECK_INTERVAL, api_key: str | None = None,
                 log_file: Any = None) -> subprocess.Popen:
    """Start ``python -m sglang_router.launch_router`` in front of ``worker_urls``."""
    cmd = [sys.executable, "-m", "sglang_router.launch_router",
           *router_cli_args(worker_urls, host, port, policy, log_level, health_check_interval, api_key)]
    return subprocess.Popen(cmd, start_new_session=True, preexec_fn=_die_with_parent, stdout=log_file,
                            stderr=subprocess.STDOUT if log_file is not None else None)


def wait_router(url: str, n_workers: int, proc: subprocess.Popen, timeout: float = 120.0,
                api_key: str | None = None) -> None:
    """Until the router lists ``n_workers`` healthy workers (its /health is 200 before it has any)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"router exited with code {proc.returncode} during startup")
        try:
            workers = _get_json(url + "/workers", headers=headers).get("workers", [])
            if sum(bool(w.get("is_healthy")) for w in workers) >= n_workers:
                return
        except Exception:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"router at {url} did not register {n_workers} healthy workers within {timeout:.0f} s")


def launch_dp_deployment(server_args: ServerArgs, policy: str = "cache_aware", timeout: float = 600.0,
                         health_check_interval: int = DEFAULT_HEALTH_CHECK_INTERVAL, replica_log: Any = None,
                         router_log: Any = None) -> DPDeployment:
    """Start ``server_args.dp_size`` replicas and a router on ``server_args.host:port``; return when all serve."""
    n = server_args.dp_size
    urls, procs = start_replicas(server_args, n, replica_log)
    dep = DPDeployment(f"http://{server_args.host}:{server_args.port}", urls, procs)
    try:
        wait_replicas(urls, procs, timeout, server_args.api_key)
        dep.router = start_router(urls, server_args.host, server_args.port, policy, server_args.log_level,
                                  health_check_interval, server_args.api_key, router_log)
        probe = f"http://{'127.0.0.1' if server_args.host in ('0.0.0.0', '::') else server_args.host}:{server_args.port}"
        wait_router(probe, n, dep.router, api_key=server_args.api_key)
    except BaseException:
        dep.shutdown(5.0)
        raise
    return dep


def launch_dp(server_args: ServerArgs) -> None:
    """CLI entry for ``--dp-size N``: serve until SIGTERM/SIGINT (exit 0) or the router/all replicas die (exit 1).

    The policy is ``cache_aware`` unless ``SGLITE_ROUTER_POLICY`` names another.
    """
    from sglite_runtime.entrypoints.process_utils import setup_logging

    setup_logging(server_args.log_level)
    policy = os.environ.get("SGLITE_ROUTER_POLICY", "cache_aware")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    dep = launch_dp_deployment(server_args, policy)
    logger.info("sglite DP=%d serving at %s (sglang-router, %s) over %s", server_args.dp_size, dep.url, policy,
                " ".join(dep.replica_urls))
    code = 0
    reported: set[int] = set()  # replica indices already reported dead
    while not stop.wait(0.5):
        if dep.router is not None and dep.router.poll() is not None:
            logger.error("router exited with code %s; stopping", dep.router.returncode)
            code = 1
            break
        dead = set(dep.dead_replicas())
        for i in sorted(dead - reported):
            logger.error("replica %d (%s) exited with code %s; the router drops it", i, dep.replica_urls[i],
                         dep.replicas[i].returncode)
        reported = dead
        if len(dead) == len(dep.replicas):
            logger.error("no replica left; stopping")
            code = 1
            break
    dep.shutdown(server_args.graceful_timeout)
    logger.info("DP deployment exited with code %d", code)
    sys.exit(code)
