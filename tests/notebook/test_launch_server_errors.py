"""launch_server() fails at once, with the server's own reason, instead of returning a handle to
someone else's server (busy port) or a dead one (failed start)."""

from __future__ import annotations

import errno
import socket
import time

import pytest

import sglite
from sglite_runtime.entrypoints.launcher import ServerStartError, _startup_error


def test_busy_port_raises_at_once():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            sglite.launch_server(port=port)
        assert time.monotonic() - t0 < 1
        assert info.value.errno == errno.EADDRINUSE and f"Port {port}" in str(info.value)


def test_missing_model_fails_before_starting_anything():
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="does not exist"):
        sglite.launch_server(model_path="/no/such/model")
    assert time.monotonic() - t0 < 1


def test_failed_start_raises_the_servers_own_error():
    with pytest.raises(ServerStartError) as info:
        sglite.launch_server(attention_backend="no-such-backend", timeout=120)
    msg = str(info.value)
    assert "no-such-backend" in msg and "exited with code 2" in msg, msg
    assert "\n" not in msg


def test_startup_error_picks_the_exception_line(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("[12:00:00] INFO x: starting\nTraceback (most recent call last):\n  File ...\n"
                   "OSError: [Errno 98] address already in use\n[12:00:01] INFO x: bye\n")
    assert _startup_error(str(log)) == "OSError: [Errno 98] address already in use"
    assert _startup_error(None) == ""


def test_readiness_check_ignores_a_server_that_is_not_ours():
    """Another process answering on the port (it took the port after our check) is not ready-ness."""
    import http.server
    import json
    import subprocess
    import sys
    import threading

    from sglite_runtime.entrypoints.launcher import ServerHandle, _wait_serving

    class Other(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            body = json.dumps({"pid": 1}).encode() if self.path == "/server_info" else b""
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    handle = ServerHandle(ours, "127.0.0.1", other.server_address[1])
    try:
        with pytest.raises(ServerStartError, match="did not become healthy"):
            _wait_serving(handle, timeout=2.0, check_pid=True)
    finally:
        ours.kill()
        ours.wait()
        other.shutdown()
