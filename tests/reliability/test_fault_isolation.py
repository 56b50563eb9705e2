"""One request's exception is that request's error, not the scheduler's: faults are injected
into an in-process Scheduler (per request: token append, prompt logprobs; per batch: forward,
decode preparation) and the faulty requests finish with a 500 abort naming the error, every
other request completes exactly as in a clean run, and the KV pool is whole afterwards."""

from __future__ import annotations

from typing import Any

import pytest
from scheduler_utils import make_scheduler, run_to_completion, submit

from sglite_runtime.managers.schedule_batch import ScheduleBatch

GREEDY = {"max_new_tokens": 12, "temperature": 0.0, "ignore_eos": True}
PROMPTS = {f"ok{i}": [5 + i, 17, 99, 230, 41 + i, 8] for i in range(3)}


@pytest.fixture(scope="module")
def scheduler(shipped_model_path: str) -> Any:
    return make_scheduler(shipped_model_path, max_total_tokens=2048, disable_cuda_graph=True)


@pytest.fixture(scope="module")
def reference(scheduler) -> dict[str, list[int]]:
    for rid, ids in PROMPTS.items():
        submit(scheduler, rid, ids, GREEDY)
    return {rid: r.output_ids for rid, r in run_to_completion(scheduler).items()}


def _run_with_bad(scheduler, bad_rids: list[str], **kw: Any) -> dict:
    for rid, ids in PROMPTS.items():
        submit(scheduler, rid, ids, GREEDY)
    for rid in bad_rids:
        submit(scheduler, rid, [7, 8, 9, 10], GREEDY, **kw)
    return run_to_completion(scheduler)  # also asserts the pool is whole (check_memory)


def _is_500(res) -> bool:
    fr = res.finish_reason
    return fr["type"] == "abort" and fr["status_code"] == 500 and "Internal error" in fr["message"]


def test_exception_in_one_requests_token_handling_fails_only_it(scheduler, reference, monkeypatch):
    original = type(scheduler.output_processor)._append_token

    def flaky(self, r, token, out, logits, i):
        original(self, r, token, out, logits, i)
        if r.rid == "bad" and len(r.output_ids) == 3:
            raise RuntimeError("injected: logprob of a cursed token")

    monkeypatch.setattr(type(scheduler.output_processor), "_append_token", flaky)
    res = _run_with_bad(scheduler, ["bad"])
    assert _is_500(res["bad"]) and "cursed" in res["bad"].finish_reason["message"]
    for rid in PROMPTS:
        assert res[rid].output_ids == reference[rid] and res[rid].finish_reason["type"] == "length"


def test_exception_in_prompt_logprobs_fails_only_it(scheduler, reference, monkeypatch):
    original = type(scheduler.output_processor)._input_logprobs_one

    def flaky(self, r, *a):
        if r.rid == "bad":
            raise IndexError("injected: prompt logprobs")
        return original(self, r, *a)

    monkeypatch.setattr(type(scheduler.output_processor), "_input_logprobs_one", flaky)
    res = _run_with_bad(scheduler, ["bad"], return_logprob=True, logprob_start_len=0)
    assert _is_500(res["bad"]) and res["bad"].output_ids == []
    for rid in PROMPTS:
        assert res[rid].output_ids == reference[rid]


def test_forward_failure_fails_its_batch_then_serving_goes_on(scheduler, reference, monkeypatch):
    runner = scheduler.model_runner
    original = runner.forward
    calls = {"n": 0}

    def flaky(fb):
        calls["n"] += 1
        if calls["n"] in (1, 4):  # the first extend, then a decode step of the next batch
            raise RuntimeError("injected: device fault")
        return original(fb)

    monkeypatch.setattr(runner, "forward", flaky)
    res = _run_with_bad(scheduler, [])
    assert all(_is_500(res[rid]) for rid in PROMPTS)  # all were in the failing extend
    res = _run_with_bad(scheduler, [])
    assert all(_is_500(res[rid]) for rid in PROMPTS)  # ... and in the failing decode step
    monkeypatch.setattr(runner, "forward", original)
    res = _run_with_bad(scheduler, [])
    assert {rid: res[rid].output_ids for rid in PROMPTS} == reference


def test_decode_preparation_failure_releases_exactly(scheduler, reference, monkeypatch):
    original = ScheduleBatch.prepare_for_decode
    calls = {"n": 0}

    def flaky(self):
        original(self)  # the slots are allocated: the failure must free them too
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected: after allocation")

    monkeypatch.setattr(ScheduleBatch, "prepare_for_decode", flaky)
    res = _run_with_bad(scheduler, [])
    assert all(_is_500(res[rid]) for rid in PROMPTS)
    monkeypatch.setattr(ScheduleBatch, "prepare_for_decode", original)
    res = _run_with_bad(scheduler, [])
    assert {rid: res[rid].output_ids for rid in PROMPTS} == reference


def test_bad_message_on_arrival_is_a_500_for_it_alone(scheduler, reference, monkeypatch):
    original = type(scheduler)._admit

    def flaky(self, recv):
        if recv.rid == "bad":
            raise KeyError("injected: admission bug")
        return original(self, recv)

    monkeypatch.setattr(type(scheduler), "_admit", flaky)
    res = _run_with_bad(scheduler, ["bad"])
    assert _is_500(res["bad"])
    assert {rid: res[rid].output_ids for rid in PROMPTS} == reference
