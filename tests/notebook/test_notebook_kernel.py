"""examples/notebook.ipynb and the life cycle of what it starts, in real Jupyter kernels.

Kernel 1 runs the notebook (all but its clean-up cell), then is SIGKILLed: its engine's workers
and its server (with the server's own children) must be gone soon after. Kernel 2 starts an
engine and a server on a tiny model, checks that the user's logging survives, that a busy port
raises at once and that a shut-down engine raises within seconds, then is restarted: the server
must be gone. Four runtime starts in all; a kernel is ~2 s of that.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
psutil = pytest.importorskip("psutil")
from jupyter_client.manager import start_new_kernel  # noqa: E402  (comes with nbclient)

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook.ipynb"
GONE_WITHIN_S = 30.0
CELL_TIMEOUT_S = 600

# Prints every process the kernel started (transitively) and the kernel's own pid, as JSON.
PIDS_CODE = """
import json as _j, os as _o, psutil as _p
print("PIDS" + _j.dumps({"kernel": _o.getpid(),
                         "tree": [c.pid for c in _p.Process().children(recursive=True)]}))
"""


def _pids(text: str) -> dict:
    line = next(ln for ln in text.splitlines() if ln.startswith("PIDS"))
    return json.loads(line[4:])


def _assert_all_gone(pids: list[int], within: float = GONE_WITHIN_S) -> None:
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + within
    while True:
        alive = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still running {within:.0f} s later: "
                                 + "; ".join(f"{p.pid} {' '.join(p.cmdline()[:4])}" for p in alive))
        time.sleep(0.25)


def _sglite_processes(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            cmd = " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            continue
        if "sglite" in cmd or "spawn_main" in cmd:
            out.append(pid)
    return out


def _cell_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") in ("execute_result", "display_data"):
            parts.append(out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


def test_example_notebook_then_kernel_kill_leaves_nothing(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    *body, cleanup = nb.cells
    assert "llm.shutdown()" in cleanup.source  # the notebook cleans up after itself
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    with client.setup_kernel():
        for i, cell in enumerate(body):
            if cell.cell_type == "code":
                client.execute_cell(cell, i)  # raises CellExecutionError on an error
        texts = [_cell_text(c) for c in body]
        assert any("your own log lines still show" in t for t in texts)  # basicConfig survived the Engine
        assert any("Person(name=" in t for t in texts)  # pydantic validated the constrained JSON
        assert any(t.startswith("ValueError: temperature") for t in texts)
        widgets = [o for c in body for o in c.get("outputs", [])
                   if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
        assert widgets or any("100%" in t and "3/3" in t for t in texts)  # run_batch's bar (text or widget)
        probe = nb.cells[-1] = nbformat.v4.new_code_cell(PIDS_CODE)  # in place of the clean-up cell
        client.execute_cell(probe, len(nb.cells) - 1)
        pids = _pids(_cell_text(probe))
        assert len(_sglite_processes(pids["tree"])) >= 4, pids  # engine: scheduler, detokenizer; server + its 2
        os.kill(pids["kernel"], signal.SIGKILL)  # the kernel dies as in a crash or an OOM kill
        _assert_all_gone(pids["tree"])


@pytest.fixture(scope="module")
def kernel():
    km, kc = start_new_kernel(kernel_name="python3", startup_timeout=120)
    yield km, kc
    kc.stop_channels()
    if km.is_alive():
        km.shutdown_kernel(now=True)


def _run(kc, code: str, timeout: float = CELL_TIMEOUT_S) -> str:
    out: list[str] = []
    errors: list[str] = []

    def hook(msg: dict) -> None:
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream" and content.get("name") == "stdout":
            out.append(content["text"])
        elif kind == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")

    reply = kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    assert reply["content"]["status"] == "ok" and not errors, errors or reply["content"]
    return "".join(out)


def test_kernel_engine_and_server_citizenship(kernel, tiny_llama_path):
    km, kc = kernel
    # The user's logging comes first; an engine and a server start together (a thread waits for the server).
    _run(kc, f"""
import logging, socket, time, concurrent.futures
import sglite
records = []
class Keep(logging.Handler):
    def emit(self, r): records.append(r.getMessage())
logging.basicConfig(level=logging.INFO, handlers=[Keep()])
handlers = list(logging.getLogger().handlers)
with concurrent.futures.ThreadPoolExecutor(1) as ex:
    fut = ex.submit(sglite.launch_server, {tiny_llama_path!r}, max_total_tokens=2048, log_level="warning",
                    skip_server_warmup=True, device="cpu")
    llm = sglite.Engine(model_path={tiny_llama_path!r}, max_total_tokens=2048)
    server = fut.result()
""")
    # The user's handlers and level are intact, and their records still arrive.
    out = _run(kc, """
logging.getLogger("user").info("mine")
print(logging.getLogger().handlers == handlers, logging.getLogger().level == logging.INFO, records[-1])
""")
    assert out.split() == ["True", "True", "mine"]
    # Rerunning the launch cell on a port that is now in use raises at once and leaves the old server alone.
    out = _run(kc, """
t0 = time.monotonic()
try:
    sglite.launch_server(port=server.port)
except OSError as e:
    print("raised", round(time.monotonic() - t0, 2), e.errno)
import requests
print(requests.get(server.url + "/health", timeout=10).status_code)
""")
    raised, seconds, errno_, status = out.split()
    assert raised == "raised" and float(seconds) < 2 and int(errno_) == 98 and status == "200"
    # A call on a shut-down engine raises within seconds (not a hang until the stop button).
    out = _run(kc, """
llm.shutdown()
t0 = time.monotonic()
try:
    llm.generate("hi", {"max_new_tokens": 4})
except RuntimeError as e:
    print(type(e).__name__, round(time.monotonic() - t0, 2))
""")
    name, seconds = out.split()
    assert name == "EngineDeadError" and float(seconds) < 2
    pids = _pids(_run(kc, PIDS_CODE))
    assert _sglite_processes(pids["tree"]), pids  # the server and its children
    km.restart_kernel(now=False)  # graceful: the kernel's exit hooks stop the server
    kc.wait_for_ready(timeout=120)
    _assert_all_gone(pids["tree"])
