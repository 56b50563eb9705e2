"""The Engine's entry (``TokenizerManager.generate_request`` called directly, as the Engine and
the program executor do) refuses every probe with a ValueError naming the problem, before
anything reaches the scheduler: the manager runs here without any runtime process, so a probe
that got through would be *sent* (and is caught by the spy on the scheduler socket)."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest
from probe_table import LOGIT_BIAS_PROBES, PROMPT_100, REQUEST_PROBES, SAMPLING_PROBES
from reliability_utils import POOL_TOKENS

from sglite_runtime.entrypoints.process_utils import PortArgs
from sglite_runtime.managers.io_struct import GenerateReqInput
from sglite_runtime.managers.tokenizer_manager import TokenizerManager
from sglite_runtime.server_args import ServerArgs


class _Spy:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sent.append(data)

    def close(self, linger: int = 0) -> None:
        pass


@pytest.fixture(scope="module")
def tm(shipped_model_path: str) -> Iterator[Any]:
    args = ServerArgs(model_path=shipped_model_path, device="cpu", max_total_tokens=POOL_TOKENS)
    manager = TokenizerManager(args, PortArgs.new(), context_len=1024, vocab_size=4096,
                               max_total_num_tokens=POOL_TOKENS)
    manager.send_to_scheduler.close(linger=0)
    manager.send_to_scheduler = _Spy()
    yield manager
    manager.recv_from_detok.close(linger=0)
    manager._validate_pool.shutdown(wait=False)
    manager.ctx.term()


def _refusal(tm: Any, obj: GenerateReqInput) -> str:
    async def run() -> None:
        async for _ in tm.generate_request(obj):
            pass

    try:
        asyncio.run(asyncio.wait_for(run(), 30))
    except ValueError as e:
        return str(e)
    raise AssertionError(f"not refused: {obj}")


def _input(fields: dict) -> GenerateReqInput:
    return GenerateReqInput(**fields)


@pytest.mark.parametrize("sp, needle", SAMPLING_PROBES + LOGIT_BIAS_PROBES)
def test_sampling_probes(tm, sp, needle):
    assert needle in _refusal(tm, GenerateReqInput(text=PROMPT_100, sampling_params=sp))
    assert tm.send_to_scheduler.sent == [] and tm.rid_to_state == {}


@pytest.mark.parametrize("fields, needle", REQUEST_PROBES)
def test_request_probes(tm, fields, needle):
    assert needle.lower() in _refusal(tm, _input(fields)).lower()
    assert tm.send_to_scheduler.sent == [] and tm.rid_to_state == {}


def test_engine_style_logprobs_bound(tm):
    # The Engine row: top_logprobs_num=10**6 killed the scheduler and the call hung.
    obj = GenerateReqInput(text="hi", sampling_params={"max_new_tokens": 4}, return_logprob=True,
                           top_logprobs_num=10**6)
    assert "top_logprobs_num must be an integer in [0, 20]" in _refusal(tm, obj)


def test_runtime_gone_is_an_error_not_a_hang(tm):
    """After fail_all (the runtime died) a waiting request finishes with a 503 abort and a new
    one raises at once."""
    async def scenario() -> tuple[dict, str]:
        tm.start()
        agen = tm.generate_request(GenerateReqInput(text="hi", sampling_params={"max_new_tokens": 4}))
        waiter = asyncio.ensure_future(agen.__anext__())
        await asyncio.sleep(0.2)
        tm.fail_all("runtime stopped (test)")
        out = await asyncio.wait_for(waiter, 5)
        await agen.aclose()
        try:
            async for _ in tm.generate_request(GenerateReqInput(text="hi")):
                pass
        except RuntimeError as e:
            return out, str(e)
        return out, ""

    try:
        out, err = asyncio.run(scenario())
    finally:
        tm.dead_message = None
        tm._loop_task = None
    reason = out["meta_info"]["finish_reason"]
    assert reason["status_code"] == 503 and "runtime stopped" in reason["message"]
    assert "runtime stopped" in err
