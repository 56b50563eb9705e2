"""Test-only fault injection, active only when SGLITE_TEST_FAULT is set (this folder is put on
PYTHONPATH of a server started by tests/reliability/test_scheduler_crash.py, so every process
of that server runs this at start-up; the patch is applied only where the scheduler module is
imported, so the other processes pay nothing).

``SGLITE_TEST_FAULT=unattributable``: when a request whose rid starts with ``crash-`` waits for
admission, the scheduler's batch selection raises (an error no request can be blamed for),
after starting a non-daemon thread, as a grammar compile thread would be.
"""

import os
import sys

TARGET = "sglite_runtime.managers.scheduler"


def _patch(module) -> None:  # type: ignore[no-untyped-def]
    import threading
    import time

    original = module.Scheduler.get_new_batch_prefill

    def faulty(self):  # type: ignore[no-untyped-def]
        if any(r.rid.startswith("crash-") for r in self.waiting_queue):
            threading.Thread(target=time.sleep, args=(3600,), daemon=False).start()
            raise RuntimeError("injected fault outside any request's handling")
        return original(self)

    module.Scheduler.get_new_batch_prefill = faulty


class _Finder:
    """Patches TARGET right after it is first executed."""

    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name != TARGET:
            return None
        from importlib.machinery import PathFinder

        spec = PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):  # type: ignore[no-untyped-def]
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get("SGLITE_TEST_FAULT") == "unattributable":
    sys.meta_path.insert(0, _Finder())
