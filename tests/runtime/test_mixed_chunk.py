"""``--enable-mixed-chunk``: running decode requests share the prefill's forward, and every
request's tokens, finish reason and logprobs are those of separate prefill and decode steps.

Prompts arrive while others decode (so prefills find running requests to carry), with chunked
prefill, greedy and seeded sampling with penalties, stop tokens, output logprobs and a regex
constraint; the KV pool must be whole afterwards (``run_to_completion`` checks it), and a spy
proves that mixed batches ran.
"""

from __future__ import annotations

import pytest
from scheduler_utils import make_scheduler, run_to_completion, submit

import sglite_runtime.managers.scheduler as scheduler_mod

PROMPTS = [[7 + i, 17, 99, 230, 41 + 3 * i, 8, 60 + i] * (1 + i % 3) for i in range(8)]


def _params(i: int) -> dict:
    if i % 4 == 0:
        return {"max_new_tokens": 9 + i, "temperature": 0, "ignore_eos": True}
    if i % 4 == 1:
        return {"max_new_tokens": 12, "temperature": 0.9, "top_k": 20, "seed": 3 + i, "presence_penalty": 0.5,
                "ignore_eos": True}
    if i % 4 == 2:
        return {"max_new_tokens": 10, "temperature": 0.7, "seed": i, "regex": "[a-z]{3,6} [0-9]{2,3}"}
    return {"max_new_tokens": 11, "temperature": 0, "ignore_eos": True}


def _run(model: str, mixed: bool, monkeypatch, **kw) -> tuple[dict, int]:
    s = make_scheduler(model, enable_mixed_chunk=mixed, disable_cuda_graph=True, **kw)
    mixes = {"n": 0}
    original = scheduler_mod.mix_running_into_prefill

    def spy(*a, **k):
        ok = original(*a, **k)
        mixes["n"] += ok
        return ok

    monkeypatch.setattr(scheduler_mod, "mix_running_into_prefill", spy)
    submit(s, "r0", PROMPTS[0], _params(0), return_logprob=True, top_logprobs_num=2)

    def on_step(sched, n):
        if 1 <= n <= 7:  # one arrival per step while r0 and the earlier ones decode
            submit(sched, f"r{n}", PROMPTS[n], _params(n))

    return run_to_completion(s, on_step=on_step), mixes["n"]


@pytest.mark.parametrize("chunk, page", [(None, 1), (8, 1), (None, 4)], ids=["whole", "chunked", "paged"])
def test_mixed_chunk_on_and_off_give_the_same_outputs(shipped_model_path, monkeypatch, chunk, page):
    on, n_mixed = _run(shipped_model_path, True, monkeypatch, chunked_prefill_size=chunk, page_size=page)
    off, n_off = _run(shipped_model_path, False, monkeypatch, chunked_prefill_size=chunk, page_size=page)
    assert n_mixed >= 4 and n_off == 0
    assert set(on) == set(off) == {f"r{i}" for i in range(8)}
    for rid in on:
        assert on[rid].output_ids == off[rid].output_ids, rid
        assert on[rid].finish_reason == off[rid].finish_reason, rid
    for (x, t), (y, u) in zip(on["r0"].output_token_logprobs, off["r0"].output_token_logprobs, strict=True):
        assert t == u and abs(x - y) < 1e-4
