"""Shared pieces of the option walks (tests/test_options.py, tests/test_request_fields.py)."""

from __future__ import annotations

import os
import re
import sys
import types
from typing import Any, Callable

from sglite_runtime.server_args import SHIPPED_MODEL_PATH, ServerArgs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "runtime"))

from scheduler_utils import make_scheduler, run_to_completion, submit  # noqa: E402

PROMPT = "<|user|>What is the capital of France?<|end|><|assistant|>"


def covered(where: str) -> Callable[..., None]:
    """A check proven by another test (``path::test_name``): assert that test exists."""
    def check(ctx: "Ctx") -> None:
        path, name = where.split("::")
        with open(os.path.join(ROOT, path)) as f:
            assert re.search(rf"^(async )?def {re.escape(name)}\(", f.read(), re.M), f"{where} is gone"
    return check


class Ctx:
    """Lazily built shared components: one base scheduler, its greedy output, a tokenizer."""

    def __init__(self, tmp_path_factory: Any):
        self.tmp = tmp_path_factory
        self.base = make_scheduler(SHIPPED_MODEL_PATH)
        self.tok = self.base.tokenizer
        self.prompt = self.tok.encode(PROMPT, add_special_tokens=False)
        self.greedy = self.run({"max_new_tokens": 16, "temperature": 0})["x"]

    def run(self, *sampling: dict, sched: Any = None, **kw: Any) -> dict:
        s = sched or self.base
        for i, sp in enumerate(sampling):
            submit(s, "x" if len(sampling) == 1 else str(i), self.prompt, sp, **kw)
        return run_to_completion(s)

    def sched(self, **kw: Any) -> Any:
        return make_scheduler(SHIPPED_MODEL_PATH, **kw)


def _tm(ctx: Ctx, **kw: Any) -> Any:
    """A TokenizerManager with no scheduler behind it: its sockets are closed at once and what
    it would send is kept in ``tm.sent``."""
    from sglite_runtime.entrypoints.process_utils import PortArgs
    from sglite_runtime.managers.tokenizer_manager import TokenizerManager

    tm = TokenizerManager(ServerArgs(**kw), PortArgs.new(), ctx.base.context_len, ctx.base.vocab_size)
    tm.ctx.destroy(linger=0)
    tm.sent = []
    tm.send_to_scheduler = types.SimpleNamespace(send=tm.sent.append)
    return tm


def _app_client(args: ServerArgs, procs: Any = None) -> Any:
    from fastapi.testclient import TestClient

    from sglite_runtime.entrypoints.http_server import create_app

    return TestClient(create_app(args, procs), raise_server_exceptions=False)


