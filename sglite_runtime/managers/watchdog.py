"""``--watchdog-timeout``: a forward step that runs longer than N seconds kills its process.

A stuck step (a hung kernel, a deadlocked collective, a grammar that never returns) would
otherwise leave the server up, accepting requests that never finish. The scheduler stamps
``step_started_at`` around each batch; this thread watches the stamp and, past the timeout,
logs the stack of every thread and exits the process with code 1. The HTTP server's child
watchdog (``entrypoints/server_lifecycle.py``) then sees a dead child and exits non-zero.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import threading
import time
from typing import Any, Callable

logger = logging.getLogger(__name__)


def _die(message: str) -> None:
    logger.error("%s", message)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    for h in logging.getLogger().handlers:
        h.flush()
    os._exit(1)  # the main thread is stuck: only a hard exit ends the process


class StepWatchdog:
    """Watches ``target.step_started_at`` (a ``time.monotonic()`` stamp, None between steps)."""

    def __init__(self, target: Any, timeout: float, name: str = "scheduler",
                 on_timeout: Callable[[str], None] = _die):
        self.target = target
        self.timeout = float(timeout)
        self.name = name
        self.on_timeout = on_timeout
        self.fired = False
        self._thread = threading.Thread(target=self._run, name=f"{name}-watchdog", daemon=True)

    def start(self) -> "StepWatchdog":
        self._thread.start()
        return self

    def check(self, now: float | None = None) -> bool:
        """Fire once when the current step is older than the timeout; returns whether it fired."""
        started = getattr(self.target, "step_started_at", None)
        now = time.monotonic() if now is None else now
        if self.fired or started is None or now - started <= self.timeout:
            return False
        self.fired = True
        self.on_timeout(f"{self.name} watchdog: a forward step has run for {now - started:.1f} s, "
                        f"longer than --watchdog-timeout {self.timeout:g} s; exiting")
        return True

    def _run(self) -> None:
        period = min(max(self.timeout / 4, 0.05), 5.0)
        while not self.fired:
            time.sleep(period)
            self.check()
