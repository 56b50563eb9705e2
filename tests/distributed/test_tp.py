"""Tensor parallelism on CPU (gloo): TP=2 equals TP=1, and a dead rank stops the rest.

* logits: a direct 2-rank forward (extend + one decode) matches the TP=1 model within 1e-4,
  for kv_heads 2 (split, one head per rank) and kv_heads 1 (the head replicated on both ranks);
* end to end through ``sglite.Engine(tp_size=2)`` vs ``tp_size=1``: greedy and seeded sampled
  outputs are identical token for token;
* killing one rank: the other leaves its collective and exits non-zero within seconds, and the
  launcher's ``RuntimeProcesses`` reports both as dead (what the server watchdog polls).
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from tp_helpers import extend_then_decode, free_port, tp_forward_worker  # noqa: E402

from conftest import make_model_with_tokenizer  # noqa: E402

LOGITS_ATOL = 1e-4  # fp32; the only difference is the summation order of the row-parallel all-reduce
PROMPTS = ["The list of", "Hello there my friend, how", "1 2 3 4 5 6 7 8 9 10 11 12"]


@pytest.fixture(scope="module", params=[2, 1], ids=["kv2", "kv1-replicated"])
def model_path(request, tmp_path_factory) -> str:
    # 4 query heads; kv 2 splits one KV head per rank, kv 1 replicates the only one on both.
    path = str(tmp_path_factory.mktemp(f"tp-kv{request.param}"))
    return make_model_with_tokenizer(path, "llama", num_key_value_heads=request.param)


def test_tp2_logits_match_tp1(model_path, tmp_path):
    from sglite_runtime.models.loader import load_model
    from sglite_runtime.utils.hf_utils import get_tokenizer

    tok = get_tokenizer(model_path)
    prompts = [tok.encode(p) for p in PROMPTS]
    out_path = str(tmp_path / "tp2.pt")
    torch.multiprocessing.spawn(tp_forward_worker, args=(2, f"127.0.0.1:{free_port()}", model_path, prompts, out_path),
                                nprocs=2, join=True)
    tp2 = torch.load(out_path)
    assert tp2["num_kv_heads"] == 1  # per rank: split (kv2) or replicated (kv1)
    ref_model, _ = load_model(model_path, device="cpu")
    ref = extend_then_decode(ref_model.eval(), prompts)
    assert len(ref) == len(tp2["logits"])
    for a, b in zip(ref, tp2["logits"]):
        assert a.shape == b.shape
        torch.testing.assert_close(b, a, atol=LOGITS_ATOL, rtol=0)


def _generate_all(tp_size: int, model_path: str) -> list[list[int]]:
    import sglite

    params = [{"max_new_tokens": 24, "temperature": 0}] * len(PROMPTS) + [
        {"max_new_tokens": 24, "temperature": 0.9, "top_p": 0.9, "seed": 7}] * len(PROMPTS)
    with sglite.Engine(model_path=model_path, tp_size=tp_size, max_total_tokens=4096) as llm:
        outs = llm.generate(PROMPTS * 2, params)
        # A second round reuses the radix cache (prefix hits) on every rank alike.
        outs += llm.generate([p + " and more" for p in PROMPTS], {"max_new_tokens": 8, "temperature": 0})
    return [o["output_ids"] if "output_ids" in o else o["text"] for o in outs]


def test_engine_tp2_matches_tp1(model_path):
    tp1 = _generate_all(1, model_path)
    tp2 = _generate_all(2, model_path)
    assert tp2 == tp1


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def test_killing_a_rank_stops_the_other(tiny_llama_path):
    import sglite

    llm = sglite.Engine(model_path=tiny_llama_path, tp_size=2, max_total_tokens=4096)
    try:
        assert llm.generate("Hi", {"max_new_tokens": 2, "temperature": 0})["meta_info"]["completion_tokens"] == 2
        procs = llm._procs
        ranks = {p.name: p for p in procs.procs if "scheduler-tp" in p.name}
        assert sorted(ranks) == ["sglite-scheduler-tp0", "sglite-scheduler-tp1"]
        assert procs.alive()
        os.kill(ranks["sglite-scheduler-tp1"].pid, signal.SIGKILL)
        # Rank 0 fails its next broadcast (≤ 1 s idle poll) and exits 1; no hang.
        assert _wait(lambda: not ranks["sglite-scheduler-tp0"].is_alive(), 10.0), "rank 0 hung after rank 1 died"
        assert ranks["sglite-scheduler-tp0"].exitcode == 1
        assert not procs.alive()
        assert set(procs.dead_children()) >= set(ranks)
    finally:
        t = time.monotonic()
        llm.shutdown()
        assert time.monotonic() - t < 15
