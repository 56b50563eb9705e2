"""End to end: the Triton backend gives the same greedy tokens as torch-native on the shipped
model (under TRITON_INTERPRET=1 on a CPU), through the real scheduler: prefill, prefix hits,
chunked prefill and decode."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "runtime"))

from scheduler_utils import generate  # noqa: E402

GREEDY = {"max_new_tokens": 4, "temperature": 0, "ignore_eos": True}


def test_triton_matches_torch_native_end_to_end(shipped_model_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(shipped_model_path)
    shared = "A dictionary maps keys to values, and a list keeps items in order. "
    prompts = [tok.encode(shared + t) for t in ("The list", "A tuple is", "Sets are")] + [tok.encode("def f(x):")]
    kwargs = dict(chunked_prefill_size=32, max_total_tokens=4096)
    ref = generate(shipped_model_path, prompts, GREEDY, attention_backend="torch_native", **kwargs)
    tri = generate(shipped_model_path, prompts, GREEDY, attention_backend="triton", **kwargs)
    assert [r.output_ids for r in tri] == [r.output_ids for r in ref]
    assert sum(r.cached_tokens for r in tri) > 0  # the prefix path of the extend kernel ran
