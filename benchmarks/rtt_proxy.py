"""A TCP pass-through that adds a fixed network delay, as a client talking to a remote server sees.

Every chunk of bytes is forwarded ``rtt/2`` after it arrived, in each direction, so a request
and its response together pay one round trip, and a streamed response arrives with the same
spacing it left with (the link is delayed, not slowed). It works below HTTP, so keep-alive
connections, streaming and any client behave as they would over a real network.

``RttProxy`` runs the proxy in its own process, so that the benchmark's client threads
(which hold the GIL) cannot stretch the delay; ``RttProxy(..., in_process=True)`` runs it
in a thread instead.

    with RttProxy("127.0.0.1", 30000, rtt_ms=20) as proxy:
        be = sglite.RuntimeEndpoint(proxy.url)

    python benchmarks/rtt_proxy.py --target 127.0.0.1:30000 --port 31000 --rtt-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import subprocess
import sys
import threading
import time

logger = logging.getLogger(__name__)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Forward reader -> writer, each chunk ``delay`` seconds after it arrived, in order."""
    queue: asyncio.Queue = asyncio.Queue()

    async def recv() -> None:
        while True:
            data = await reader.read(65536)
            await queue.put((time.monotonic() + delay, data))
            if not data:
                return

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(recv(), send())
    except (ConnectionError, asyncio.IncompleteReadError, OSError):
        pass
    finally:
        writer.close()


class RttProxy:
    """A delaying proxy to ``host:port`` on a free local port (own process, or a thread)."""

    def __init__(self, host: str, port: int, rtt_ms: float, in_process: bool = False, listen_port: int = 0):
        self.in_process = in_process
        self._proc: subprocess.Popen | None = None
        self.target = (host, port)
        self.delay = rtt_ms / 2000.0
        self.rtt_ms = rtt_ms
        if listen_port:
            self.port = listen_port
        else:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
            sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rtt-proxy", daemon=True)

    async def _handle(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.target)
        except OSError as e:
            logger.warning("rtt proxy: cannot reach %s:%d: %s", *self.target, e)
            c_writer.close()
            return
        for w in (c_writer, s_writer):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.gather(_pipe(c_reader, s_writer, self.delay), _pipe(s_reader, c_writer, self.delay))
        except asyncio.CancelledError:
            # Shutdown cancels open connections; ending quietly keeps asyncio from logging them.
            c_writer.close()
            s_writer.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024))
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> "RttProxy":
        if self.in_process:
            self._thread.start()
            self._ready.wait(10)
            return self
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--target", f"{self.target[0]}:{self.target[1]}",
             "--port", str(self.port), "--rtt-ms", str(self.rtt_ms)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"rtt proxy exited with code {self._proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        self._stop_proc()
        raise RuntimeError("rtt proxy did not start within 30 s")

    def _stop_proc(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)

    def serve_forever(self) -> None:
        """Run the proxy in this thread until killed (the subprocess's main)."""
        self._run()

    async def _shutdown(self) -> None:
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __exit__(self, *exc) -> None:
        if not self.in_process:
            self._stop_proc()
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


def measured_rtt_ms(url: str, n: int = 5) -> float:
    """Median wall time of a tiny GET through ``url`` (a check that the delay is in place)."""
    import statistics

    import requests

    with requests.Session() as s:
        s.get(url + "/health", timeout=30)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            s.get(url + "/health", timeout=30)
            times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description="TCP pass-through adding a fixed round-trip time")
    ap.add_argument("--target", required=True, help="host:port of the server")
    ap.add_argument("--port", type=int, required=True, help="local port to listen on")
    ap.add_argument("--rtt-ms", type=float, required=True)
    a = ap.parse_args()
    host, port = a.target.rsplit(":", 1)
    RttProxy(host, int(port), a.rtt_ms, in_process=True, listen_port=a.port).serve_forever()


if __name__ == "__main__":
    main()
