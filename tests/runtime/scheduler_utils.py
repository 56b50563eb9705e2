"""Drive a Scheduler in-process (no ZMQ) and collect each request's tokens and finish reason."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from sglite_runtime.managers.io_struct import AbortReq, TokenizedGenerateReqInput, finish_reason_json
from sglite_runtime.managers.scheduler import Scheduler
from sglite_runtime.server_args import ServerArgs


@dataclass
class Result:
    output_ids: list[int] = field(default_factory=list)
    finish_reason: dict | None = None
    cached_tokens: int = 0
    prompt_tokens: int = 0
    output_token_logprobs: list = field(default_factory=list)
    input_token_logprobs: list | None = None


def make_scheduler(model_path: str, **kwargs: Any) -> Scheduler:
    kwargs.setdefault("max_total_tokens", 8192)
    kwargs.setdefault("device", "cpu")
    return Scheduler(ServerArgs(model_path=model_path, **kwargs))


def submit(s: Scheduler, rid: str, ids: list[int], sampling: dict, **kw: Any) -> None:
    s.process_input_requests([TokenizedGenerateReqInput(rid=rid, input_text=None, input_ids=list(ids),
                                                        sampling_params=dict(sampling), **kw)])


def run_to_completion(s: Scheduler, results: dict[str, Result] | None = None, max_steps: int = 100000,
                      on_step: Any = None) -> dict[str, Result]:
    results = {} if results is None else results
    steps = 0
    while s.has_work():
        if not s.step():
            time.sleep(0.001)  # only grammar compiles pending: let their thread run
        steps += 1
        collect(s, results)
        if on_step is not None:
            on_step(s, steps)
        assert steps < max_steps, "scheduler did not finish"
    collect(s, results)
    s.check_memory()
    return results


def collect(s: Scheduler, results: dict[str, Result]) -> None:
    for out in s.drain_outputs():
        for i, rid in enumerate(out.rids):
            r = results.setdefault(rid, Result())
            r.output_ids.extend(out.new_token_ids[i])
            r.finish_reason = finish_reason_json(out.finished_reasons[i])  # what clients see
            r.cached_tokens = out.cached_tokens[i]
            r.prompt_tokens = out.prompt_tokens[i]
            if out.output_token_logprobs[i]:
                r.output_token_logprobs.extend(out.output_token_logprobs[i])
            if out.input_token_logprobs[i] is not None:
                r.input_token_logprobs = out.input_token_logprobs[i]


def generate(model_path: str, prompts: list[list[int]], sampling: dict, **kwargs: Any) -> list[Result]:
    s = make_scheduler(model_path, **kwargs)
    for i, p in enumerate(prompts):
        submit(s, str(i), p, sampling)
    res = run_to_completion(s)
    return [res[str(i)] for i in range(len(prompts))]


def abort(s: Scheduler, rid: str = "", abort_all: bool = False) -> None:
    s.process_input_requests([AbortReq(rid=rid, abort_all=abort_all)])
