"""Overlap scheduling (on by default) gives exactly the outputs of the sequential scheduler.

A mixed workload runs on an in-process Scheduler with overlap on and off: greedy and seeded
requests finishing at different steps (each finish leaves one discarded extra token in flight),
stop tokens and stop strings, logprobs, a regex constraint (runs sequentially), arrivals while
decoding, retraction under a tiny KV pool, and aborts. Token ids, finish reasons and logprobs
must be equal and the KV pool whole when idle (``run_to_completion`` checks it). The offline
Engine is compared too (n > 1, a JSON schema, stop strings), through its subprocesses.
"""

from __future__ import annotations

from typing import Any

import pytest
from scheduler_utils import abort, make_scheduler, run_to_completion, submit

import sglite

PROMPTS = [[5 + i, 17, 99, 230, 41 + 3 * i, 8, 60 + i] for i in range(10)]


def _workload(stop_token: int, stop_str: str) -> list[tuple[str, list[int], dict, dict]]:
    w = []
    for i, p in enumerate(PROMPTS[:4]):  # greedy, finishing at 3, 6, 9, 12 tokens
        w.append((f"g{i}", p, {"max_new_tokens": 3 * (i + 1), "temperature": 0, "ignore_eos": True}, {}))
    for i, p in enumerate(PROMPTS[4:7]):  # seeded sampling with penalties
        w.append((f"s{i}", p, {"max_new_tokens": 10 + i, "temperature": 0.9, "top_p": 0.9, "seed": 11 + i,
                                "frequency_penalty": 0.3, "ignore_eos": True}, {}))
    w.append(("stop_id", PROMPTS[0], {"max_new_tokens": 16, "temperature": 0, "stop_token_ids": [stop_token]}, {}))
    w.append(("stop_str", PROMPTS[0], {"max_new_tokens": 16, "temperature": 0, "stop": [stop_str]}, {}))
    w.append(("lp", PROMPTS[7], {"max_new_tokens": 7, "temperature": 0, "ignore_eos": True},
              {"return_logprob": True, "logprob_start_len": 0, "top_logprobs_num": 3}))
    w.append(("regex", PROMPTS[8], {"max_new_tokens": 12, "temperature": 0.7, "seed": 5,
                                    "regex": "[0-9]{2,4}-[a-z]{2,6}"}, {}))
    return w


def _run(model: str, overlap: bool, stop_token: int, stop_str: str, **kw: Any) -> dict:
    s = make_scheduler(model, disable_overlap_schedule=not overlap, disable_cuda_graph=True, **kw)
    assert (s.overlap is not None) == overlap
    late = []
    for rid, ids, sp, extra in _workload(stop_token, stop_str):
        (late if rid in ("s2", "lp") else []).append((rid, ids, sp, extra))
        if rid not in ("s2", "lp"):
            submit(s, rid, ids, sp, **extra)
    submit(s, "gone", PROMPTS[9], {"max_new_tokens": 30, "temperature": 0, "ignore_eos": True})

    def on_step(sched, n):
        if n == 4:  # arrivals while decoding drain the pipeline, then it refills
            for rid, ids, sp, extra in late:
                submit(sched, rid, ids, sp, **extra)
        if n == 6:
            abort(sched, "gone")

    return run_to_completion(s, on_step=on_step)


@pytest.fixture(scope="module")
def stops(shipped_model_path) -> tuple[int, str]:
    from sglite_runtime.utils.hf_utils import get_tokenizer

    ref = run_to_completion(_sched_with(shipped_model_path, [("x", PROMPTS[0], {"max_new_tokens": 16,
                                                                                 "temperature": 0})]))["x"]
    text = get_tokenizer(shipped_model_path).decode(ref.output_ids[:8])
    return ref.output_ids[5], text[len(text) // 2: len(text) // 2 + 2]


def _sched_with(model: str, reqs: list) -> Any:
    s = make_scheduler(model, disable_cuda_graph=True)
    for rid, ids, sp in reqs:
        submit(s, rid, ids, sp)
    return s


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for rid in a:
        if rid == "gone":
            continue
        assert a[rid].output_ids == b[rid].output_ids, rid
        assert a[rid].finish_reason == b[rid].finish_reason, rid
        assert len(a[rid].output_token_logprobs) == len(b[rid].output_token_logprobs)
        for (x, t), (y, u) in zip(a[rid].output_token_logprobs, b[rid].output_token_logprobs):
            assert t == u and abs(x - y) < 1e-5
        assert a[rid].input_token_logprobs == b[rid].input_token_logprobs or rid == "lp"


@pytest.mark.parametrize("pool", [4096, 160], ids=["roomy", "retracting"])
def test_overlap_on_and_off_give_the_same_outputs(shipped_model_path, stops, pool):
    on = _run(shipped_model_path, True, *stops, max_total_tokens=pool)
    off = _run(shipped_model_path, False, *stops, max_total_tokens=pool)
    _same(on, off)
    assert on["stop_id"].finish_reason == {"type": "stop", "matched": stops[0]}
    assert on["stop_str"].finish_reason["type"] == "stop"
    assert on["gone"].finish_reason["type"] == "abort" and off["gone"].finish_reason["type"] == "abort"
    assert [len(on[f"g{i}"].output_ids) for i in range(4)] == [3, 6, 9, 12]


def test_overlap_actually_overlaps(shipped_model_path):
    """Decode steps are launched before the previous one's tokens are processed (a test that
    the overlap path runs at all, so the equality above is not sequential vs sequential)."""
    s = make_scheduler(shipped_model_path, disable_cuda_graph=True)
    ahead = []  # per launch: were the previous step's tokens still unprocessed on the host?
    original = s.overlap._launch

    def spy(batch):
        # The step's input token sits at position seq_len - 1; once processed it is r.output_ids[-1].
        ahead.append(all(batch.seq_lens_cpu[i] == r.seqlen + 1 for i, r in enumerate(batch.reqs)))
        original(batch)

    s.overlap._launch = spy
    for i in range(3):
        submit(s, str(i), PROMPTS[i], {"max_new_tokens": 8, "temperature": 0, "ignore_eos": True})
    run_to_completion(s)
    assert sum(ahead) >= 5


def test_engine_overlap_on_and_off(shipped_model_path):
    prompts = ["The quick brown fox", "Once upon a time", "Numbers:"]
    params = [
        {"max_new_tokens": 12, "temperature": 0.8, "seed": 7, "n": 3},
        {"max_new_tokens": 10, "temperature": 0, "stop": ["e"]},
        {"max_new_tokens": 24, "temperature": 0,
         "json_schema": '{"type":"object","properties":{"a":{"type":"integer"}},"required":["a"]}'},
    ]
    outs = []
    for disable in (False, True):
        with sglite.Engine(model_path=shipped_model_path, max_total_tokens=4096,
                           disable_overlap_schedule=disable) as e:
            outs.append([e.generate(p, sp) for p, sp in zip(prompts, params)])
            pool = e.get_server_info()["internal_states"][0]["kv_pool"]
            assert pool["available"] + pool["evictable"] == pool["total"] and pool["protected"] == 0
    on, off = outs

    def key(o):
        return o["output_ids"], o["meta_info"]["finish_reason"]

    assert [key(o) for o in on[0]] == [key(o) for o in off[0]]
    assert key(on[1]) == key(off[1]) and key(on[2]) == key(off[2])


def test_flush_right_after_the_last_output(shipped_model_path):
    """The last outputs leave while the discarded extra step may still be in flight; a flush
    sent right then must succeed, as without overlap."""
    from scheduler_utils import collect

    s = make_scheduler(shipped_model_path, disable_cuda_graph=True)
    for i in range(2):
        submit(s, str(i), PROMPTS[i], {"max_new_tokens": 6, "temperature": 0, "ignore_eos": True})
    results: dict = {}
    while not all(rid in results and results[rid].finish_reason for rid in ("0", "1")):
        s.step()
        collect(s, results)
    assert s.overlap.busy()  # the extra step of the finished requests
    assert s.flush_cache()
    s.check_memory()
