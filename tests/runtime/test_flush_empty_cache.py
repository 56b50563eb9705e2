"""``/flush_cache {"empty_cache": true}`` reaches the scheduler and empties the CUDA cache there."""

from __future__ import annotations

import torch

from scheduler_utils import make_scheduler, run_to_completion, submit
from sglite_runtime.managers.io_struct import FlushCacheReq, FlushCacheReqOutput, decode, encode


def test_empty_cache_only_when_asked_and_only_on_cuda(tiny_llama_path, monkeypatch):
    s = make_scheduler(tiny_llama_path)
    calls: list[int] = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    submit(s, "a", [1, 2, 3], {"max_new_tokens": 2})
    run_to_completion(s)

    def flush(empty: bool) -> FlushCacheReqOutput:
        msg = decode(encode(FlushCacheReq(empty_cache=empty)))  # as it crosses the process boundary
        (reply,) = s.process_input_requests([msg])
        assert isinstance(reply, FlushCacheReqOutput) and reply.success
        return reply

    flush(True)
    assert calls == []  # a CPU scheduler has no device cache: a no-op
    s.device = torch.device("cuda")  # only the branch is exercised: the flush touches no tensor
    flush(False)
    assert calls == []
    flush(True)
    assert calls == [1]
    assert s.tree_cache.evictable_size() == 0
