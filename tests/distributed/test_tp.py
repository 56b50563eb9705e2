"""Tensor parallelism on CPU (gloo): TP=2 equals TP=1, and a dead rank stops the rest.

* logits: a direct 2-rank forward (extend + one decode) matches the TP=1 model within 1e-4,
  for kv_heads 2 (split, one head per rank) and kv_heads 1 (the head replicated on both ranks);
* end to end through ``sglite.Engine(tp_size=2)`` vs ``tp_size=1``: greedy and seeded sampled
  outputs are identical token for token;
* two "nodes" on loopback (``--nnodes 2 --node-rank 1 --dist-init-addr``) give the same tokens;
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

from model_utils import make_tiny_model_with_tokenizer  # noqa: E402  (tests/runtime is on sys.path via tests/conftest.py)

LOGITS_ATOL = 1e-4  # fp32; the only difference is the summation order of the row-parallel all-reduce
PROMPTS = ["The list of", "Hello there my friend, how", "1 2 3 4 5 6 7 8 9 10 11 12"]


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory) -> dict[int, str]:
    """kv_heads -> model. 4 query heads; kv 2 splits one KV head per rank, kv 1 replicates the only one."""
    return {kv: make_tiny_model_with_tokenizer(str(tmp_path_factory.mktemp(f"tp-kv{kv}")), "llama", num_key_value_heads=kv, std=0.08)[0]
            for kv in (2, 1)}


@pytest.fixture(scope="module")
def tp2_engine(model_paths):
    """One TP=2 engine (kv 2) shared by the parity test and, last, the kill test (startup is the cost)."""
    import sglite

    llm = sglite.Engine(model_path=model_paths[2], tp_size=2, max_total_tokens=4096)
    yield llm
    t = time.monotonic()
    llm.shutdown()
    assert time.monotonic() - t < 15


def test_tp2_logits_match_tp1(model_paths, tmp_path):
    from sglite_runtime.models.loader import load_model
    from sglite_runtime.utils.hf_utils import get_tokenizer

    tok = get_tokenizer(model_paths[2])
    prompts = [tok.encode(p) for p in PROMPTS]
    for kv, path in model_paths.items():
        out_path = str(tmp_path / f"tp2-kv{kv}.pt")
        torch.multiprocessing.spawn(tp_forward_worker, args=(2, f"127.0.0.1:{free_port()}", path, prompts, out_path),
                                    nprocs=2, join=True)
        tp2 = torch.load(out_path)
        assert tp2["num_kv_heads"] == 1  # per rank: split (kv2) or replicated (kv1)
        ref_model, _ = load_model(path, device="cpu")
        ref = extend_then_decode(ref_model.eval(), prompts)
        assert len(ref) == len(tp2["logits"])
        for a, b in zip(ref, tp2["logits"]):
            assert a.shape == b.shape
            torch.testing.assert_close(b, a, atol=LOGITS_ATOL, rtol=0, msg=lambda m: f"kv_heads={kv}: {m}")


def _generate_all(llm) -> list[list[int]]:
    params = [{"max_new_tokens": 24, "temperature": 0}] * len(PROMPTS) + [
        {"max_new_tokens": 24, "temperature": 0.9, "top_p": 0.9, "seed": 7}] * len(PROMPTS)
    outs = llm.generate(PROMPTS * 2, params)
    # A second round reuses the radix cache (prefix hits) on every rank alike.
    outs += llm.generate([p + " and more" for p in PROMPTS], {"max_new_tokens": 8, "temperature": 0})
    return [o["output_ids"] for o in outs]


@pytest.mark.parametrize("kv", [2, 1], ids=["kv2", "kv1-replicated"])
def test_engine_tp2_matches_tp1(kv, model_paths, request):
    import sglite

    with sglite.Engine(model_path=model_paths[kv], tp_size=1, max_total_tokens=4096) as llm:
        tp1 = _generate_all(llm)
    if kv == 2:
        tp2 = _generate_all(request.getfixturevalue("tp2_engine"))
    else:
        with sglite.Engine(model_path=model_paths[kv], tp_size=2, max_total_tokens=4096) as llm:
            tp2 = _generate_all(llm)
    assert tp2 == tp1


def test_two_nodes_on_loopback(model_paths, tp2_engine):
    """--nnodes 2: node 1 runs only its rank (no HTTP), joins rank 0 at --dist-init-addr, exits 0 with it."""
    import subprocess

    import sglite

    addr = f"127.0.0.1:{free_port()}"
    common = ["--model-path", model_paths[2], "--tp-size", "2", "--nnodes", "2", "--dist-init-addr", addr,
              "--max-total-tokens", "4096", "--log-level", "warning"]
    node1 = subprocess.Popen([sys.executable, "-m", "sglite.launch_server", *common, "--node-rank", "1"])
    try:
        with sglite.Engine(model_path=model_paths[2], tp_size=2, nnodes=2, node_rank=0, dist_init_addr=addr,
                           max_total_tokens=4096) as llm:
            assert [p.name for p in llm._procs.procs] == ["sglite-scheduler-tp0", "sglite-detokenizer"]
            params = {"max_new_tokens": 12, "temperature": 0}
            got = [o["output_ids"] for o in llm.generate(PROMPTS, params)]
            assert got == [o["output_ids"] for o in tp2_engine.generate(PROMPTS, params)]
        assert node1.wait(20) == 0  # rank 0 broadcast "stop" on its way out
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait(5)


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def test_killing_a_rank_stops_the_other(tp2_engine):
    llm = tp2_engine
    assert llm.generate("Hi", {"max_new_tokens": 2, "temperature": 0})["meta_info"]["completion_tokens"] == 2
    procs = llm._procs
    ranks = {p.name: p for p in procs.procs if "scheduler-tp" in p.name}
    assert sorted(ranks) == ["sglite-scheduler-tp0", "sglite-scheduler-tp1"]
    assert procs.alive()
    os.kill(ranks["sglite-scheduler-tp1"].pid, signal.SIGKILL)
    # Rank 0 fails its next broadcast (<= 1 s idle poll) and exits 1; no hang.
    assert _wait(lambda: not ranks["sglite-scheduler-tp0"].is_alive(), 10.0), "rank 0 hung after rank 1 died"
    assert ranks["sglite-scheduler-tp0"].exitcode == 1
    assert not procs.alive()
    assert set(procs.dead_children()) >= set(ranks)
