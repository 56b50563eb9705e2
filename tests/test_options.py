"""Every accepted option works or is refused: a walk over every server flag, sampling field and
``/generate`` field.

Each table maps a name to a cheap check that fails when the option is ignored (most run at the
config or component level: an in-process Scheduler, the detokenizer, the FastAPI app without a
runtime). Options whose only honest check needs GPUs, several processes or a Hub are mapped to
the test that proves them (``covered``, which asserts that test exists). Adding a flag or a field
without an entry fails ``test_every_*_has_a_check``; SGLang names sglite does not implement must
be refused with an error naming them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import types
from typing import Any, Callable

import pytest

from option_checks import Ctx, _app_client, _tm, covered, run_to_completion, submit
from sglite_runtime.server_args import SHIPPED_MODEL_PATH, ServerArgs, prepare_server_args


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: Any) -> Ctx:
    return Ctx(tmp_path_factory)


# ---- server flags -----------------------------------------------------------------------------
def _tokenizer_path(ctx: Ctx) -> None:
    import shutil

    d = str(ctx.tmp.mktemp("tok"))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(os.path.join(SHIPPED_MODEL_PATH, f), d)
    assert ctx.sched(tokenizer_path=d).tokenizer.name_or_path == d


def _trust_remote_code(ctx: Ctx) -> None:
    # A config class shipped as code: refused without the flag, loaded with it.
    from sglite_runtime.models.loader import load_model

    d = ctx.tmp.mktemp("remote-code")
    src = json.load(open(os.path.join(SHIPPED_MODEL_PATH, "config.json")))
    src.update(model_type="sglite_remote", auto_map={"AutoConfig": "configuration_remote.RemoteConfig"})
    (d / "config.json").write_text(json.dumps(src))
    (d / "configuration_remote.py").write_text(
        "from transformers import LlamaConfig\n\nclass RemoteConfig(LlamaConfig):\n    model_type = 'sglite_remote'\n")
    os.symlink(os.path.join(SHIPPED_MODEL_PATH, "model.safetensors"), d / "model.safetensors")
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_model(str(d))
    _, cfg = load_model(str(d), trust_remote_code=True)
    assert type(cfg).__name__ == "RemoteConfig"
    from sglite_runtime.model_executor.model_runner import ModelRunner

    assert type(ModelRunner(ServerArgs(model_path=str(d), trust_remote_code=True, device="cpu",
                                       max_total_tokens=256)).hf_config).__name__ == "RemoteConfig"


def _chat_template(ctx: Ctx) -> None:
    from sglite_runtime.entrypoints.openai_api import _render_chat
    from sglite_runtime.entrypoints.openai_protocol import ChatMessage

    tm = _tm(ctx, chat_template="{% for m in messages %}[{{ m.content }}]{% endfor %}")
    assert _render_chat(tm, [ChatMessage(role="user", content="hi")], False) == "[hi]"


def _served_model_name(ctx: Ctx) -> None:
    assert _tm(ctx, served_model_name="my-model").model_info()["model_path"] == SHIPPED_MODEL_PATH
    assert _tm(ctx, served_model_name="my-model").served_model_name == "my-model"


def _log_requests(ctx: Ctx, caplog: Any) -> None:
    from sglite_runtime.managers.io_struct import GenerateReqInput

    for on in (False, True):
        caplog.clear()
        with caplog.at_level("INFO", logger="sglite_runtime.managers.tokenizer_manager"):
            _tm(ctx, log_requests=on)._send(GenerateReqInput(input_ids=[5]), [5], {}, f"log-{on}")
        assert ("log-True" in caplog.text) is on


def _enable_metrics(ctx: Ctx) -> None:
    with _app_client(ServerArgs(enable_metrics=False)) as c:
        r = c.get("/metrics")
        assert r.status_code == 404 and "--enable-metrics" in r.text
    with _app_client(ServerArgs(enable_metrics=True)) as c:
        assert c.get("/metrics").status_code == 200 and "sglite:num_requests_total" in c.get("/metrics").text


def _api_key(ctx: Ctx) -> None:
    with _app_client(ServerArgs(api_key="k")) as c:
        assert c.get("/v1/models").status_code == 401
    with _app_client(ServerArgs()) as c:
        assert c.get("/v1/models").status_code != 401


def _skip_server_warmup(ctx: Ctx, monkeypatch: Any) -> None:
    import sglite_runtime.entrypoints.http_server as hs

    calls: list[Any] = []

    class FakeTM:
        tokenizer = ctx.tok

        def __init__(self, *a: Any) -> None:
            self.metrics = None

        def start(self) -> None:
            pass

        async def generate_request(self, obj: Any, request: Any = None) -> Any:
            calls.append(obj)
            yield {"text": "", "meta_info": {"completion_tokens": 1}}

        async def flush_cache(self) -> None:
            calls.append("flush")

    monkeypatch.setattr(hs, "TokenizerManager", FakeTM)
    ready = types.SimpleNamespace(context_len=64, vocab_size=64, max_total_num_tokens=64)
    procs = types.SimpleNamespace(ready=ready, port_args=None,
                                  alive=lambda: True, dead_children=lambda: [])
    for skip, expected in ((True, 0), (False, 2)):
        calls.clear()
        with _app_client(ServerArgs(skip_server_warmup=skip), procs):
            pass
        assert len(calls) == expected  # the warm-up generation, then the cache flush


def _watchdog_timeout(ctx: Ctx) -> None:
    code = ("import time, types\nfrom sglite_runtime.managers.watchdog import StepWatchdog\n"
            "t = types.SimpleNamespace(step_started_at=time.monotonic())\n"
            "StepWatchdog(t, 0.3).start()\ntime.sleep(30)\n")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "--watchdog-timeout 0.3" in p.stderr and time.monotonic() - t0 < 20
    s = ctx.base
    assert s.step_started_at is None  # stamped only while a batch runs
    seen: list[Any] = []
    orig = s.run_batch
    s.run_batch = lambda b: (seen.append(s.step_started_at), orig(b))[1]
    try:
        ctx.run({"max_new_tokens": 1})
    finally:
        del s.run_batch
    assert seen and all(isinstance(v, float) for v in seen)


def _log_level(ctx: Ctx, monkeypatch: Any) -> None:
    import sglite_runtime.entrypoints.http_server as hs
    import sglite_runtime.entrypoints.process_utils as pu

    class Seen(Exception):
        pass

    def fake(level: str, prefix: str = "") -> None:
        raise Seen(level)

    monkeypatch.setattr(pu, "setup_logging", fake)
    with pytest.raises(Seen, match="debug"):
        hs.launch_server(ServerArgs(log_level="debug"))


def _stream_interval(ctx: Ctx) -> None:
    counts = {}
    for k in (1, 4):
        s = ctx.sched(stream_interval=k)
        submit(s, "s", ctx.prompt, {"max_new_tokens": 9, "ignore_eos": True, "temperature": 0}, stream=True)
        n = 0
        while s.has_work():
            s.step()
            n += sum(len(o.rids) for o in s.drain_outputs())
        counts[k] = n
    assert counts == {1: 9, 4: 3}  # tokens 1, 5, 9 (the first at once, then every 4)


def _max_prefill_tokens(ctx: Ctx) -> None:
    s = ctx.sched(max_prefill_tokens=len(ctx.prompt) + 2)
    for i in range(2):
        submit(s, str(i), ctx.prompt + [i + 5], {"max_new_tokens": 1})
    b = s.get_next_batch_to_run()
    assert b.batch_size() == 1
    s.run_batch(b)
    run_to_completion(s)


def _chunked_prefill_size(ctx: Ctx) -> None:
    s = ctx.sched(chunked_prefill_size=4)
    submit(s, "c", ctx.prompt, {"max_new_tokens": 1})
    b = s.get_next_batch_to_run()
    assert b.extend_lens_cpu == [4]
    s.run_batch(b)
    run_to_completion(s)


def _max_fanout(ctx: Ctx) -> None:
    from sglite_runtime.managers.io_struct import GenerateReqInput

    obj = GenerateReqInput(input_ids=[5], sampling_params={"n": 3, "max_new_tokens": 1})
    assert len(_tm(ctx, max_fanout=3)._prepare_sync(obj)) == 1
    with pytest.raises(ValueError, match="max-fanout"):
        _tm(ctx, max_fanout=2)._prepare_sync(obj)


def _grammar_backend(ctx: Ctx) -> None:
    names = {n: ctx.sched(grammar_backend=n).grammar_manager.backend for n in ("outlines", "xgrammar")}
    assert names["outlines"].outlines is not None and names["xgrammar"].outlines is None


def _schedule_policy(ctx: Ctx) -> None:
    # With the prompt cached, "lpm" moves the request that shares it ahead; "fcfs" keeps arrival order.
    for policy, first in (("lpm", "shares"), ("fcfs", "other")):
        s = ctx.sched(schedule_policy=policy)
        ctx.run({"max_new_tokens": 1}, sched=s)
        submit(s, "other", [7, 8, 9, 10], {"max_new_tokens": 1})
        submit(s, "shares", ctx.prompt + [11], {"max_new_tokens": 1})
        s.policy.calc_priority(s.waiting_queue)
        assert s.waiting_queue[0].rid == first, policy
        run_to_completion(s)


def _random_seed(ctx: Ctx) -> None:
    sp = {"max_new_tokens": 12, "temperature": 3.0, "ignore_eos": True}
    outs = [ctx.run(sp, sched=ctx.sched(random_seed=seed))["x"].output_ids for seed in (1, 1, 2)]
    assert outs[0] == outs[1] != outs[2]


FLAG_CHECKS: dict[str, Callable[..., None]] = {
    "model_path": lambda ctx: None if ServerArgs(model_path="/m/x").served_model_name == "x" else pytest.fail(),
    "revision": covered("tests/runtime/test_hub_models.py::test_hub_id_resolves_from_cache_with_revision"),
    "tokenizer_path": _tokenizer_path,
    "served_model_name": _served_model_name,
    "chat_template": _chat_template,
    "context_length": lambda ctx: ctx.sched(context_length=100).context_len == 100 or pytest.fail(),
    "dtype": lambda ctx: str(ctx.sched(dtype="bfloat16").model_runner.dtype) == "torch.bfloat16" or pytest.fail(),
    "device": lambda ctx: ServerArgs(device="meta").resolved_device() == "meta" or pytest.fail(),
    "trust_remote_code": _trust_remote_code,
    "random_seed": _random_seed,
    "sampling_defaults": covered("tests/runtime/test_hub_models.py::test_engine_serves_hub_id_with_model_sampling_defaults"),
    "host": covered("tests/server/test_native.py::test_generate_single"),
    "port": covered("tests/server/test_native.py::test_generate_single"),
    "api_key": _api_key,
    "mem_fraction_static": lambda ctx: (ctx.sched(mem_fraction_static=1e-4, max_total_tokens=None)
                                       .max_total_num_tokens < ctx.base.max_total_num_tokens or pytest.fail()),
    "max_total_tokens": lambda ctx: ctx.sched(max_total_tokens=512).max_total_num_tokens == 512 or pytest.fail(),
    "max_running_requests": lambda ctx: ctx.sched(max_running_requests=3).max_running_requests == 3 or pytest.fail(),
    "max_prefill_tokens": _max_prefill_tokens,
    "chunked_prefill_size": _chunked_prefill_size,
    "schedule_policy": _schedule_policy,
    "init_new_token_ratio": lambda ctx: ctx.sched(init_new_token_ratio=0.3).new_token_ratio == 0.3 or pytest.fail(),
    "disable_radix_cache": lambda ctx: ctx.sched(disable_radix_cache=True).tree_cache.disable or pytest.fail(),
    "page_size": lambda ctx: ctx.sched(page_size=4).allocator.page_size == 4 or pytest.fail(),
    "stream_interval": _stream_interval,
    "enable_mixed_chunk": covered("tests/runtime/test_mixed_chunk.py::test_mixed_chunk_on_and_off_give_the_same_outputs"),
    "disable_overlap_schedule": lambda ctx: (ctx.base.overlap is not None
                                             and ctx.sched(disable_overlap_schedule=True).overlap is None)
    or pytest.fail(),
    "attention_backend": covered("tests/kernels/test_backend_e2e.py::test_triton_matches_torch_native_end_to_end"),
    "disable_cuda_graph": covered("tests/kernels/test_cuda_graph_runner.py::test_padded_replay_matches_eager"),
    "cuda_graph_max_bs": covered("tests/kernels/test_cuda_graph_runner.py::test_capture_batch_sizes"),
    "grammar_backend": _grammar_backend,
    "grammar_compile_timeout": covered("tests/structured/test_validation_and_cache.py::test_compile_timeout_marks_invalid"),
    "constrained_json_whitespace_pattern": covered("tests/structured/test_whitespace.py::test_server_flag_reaches_the_backend"),
    "reasoning_parser": covered("tests/server/test_reasoning.py::test_parser_choice_and_template_kwargs"),
    "max_fanout": _max_fanout,
    "max_request_body_bytes": covered("tests/reliability/test_event_loop.py::test_10mb_body_is_413_and_health_stays_fast"),
    "disable_jump_forward": lambda ctx: not ctx.sched(disable_jump_forward=True).grammar_manager.jump_forward
    or pytest.fail(),
    "jump_forward_mode": lambda ctx: ctx.sched(jump_forward_mode="string").grammar_manager.string_mode
    or pytest.fail(),
    "tp_size": covered("tests/distributed/test_tp.py::test_engine_tp2_matches_tp1"),
    "dp_size": covered("tests/distributed/test_router.py::test_dp_size_cli_is_one_server_and_stops_together"),
    "nnodes": covered("tests/distributed/test_tp.py::test_two_nodes_on_loopback"),
    "node_rank": covered("tests/distributed/test_tp.py::test_two_nodes_on_loopback"),
    "dist_init_addr": covered("tests/distributed/test_tp.py::test_two_nodes_on_loopback"),
    "log_level": _log_level,
    "log_requests": _log_requests,
    "enable_metrics": _enable_metrics,
    "graceful_timeout": covered("tests/server/test_lifecycle.py::test_sigterm_drains_then_exits_0"),
    "watchdog_timeout": _watchdog_timeout,
    "skip_server_warmup": _skip_server_warmup,
    "num_threads": lambda ctx: __import__("sglite_runtime.model_executor.model_runner", fromlist=["x"]).cpu_threads(
        ServerArgs(num_threads=3), ctx.base.model_runner.hf_config) == 3 or pytest.fail(),
}


def _parser_dests() -> list[str]:
    parser = argparse.ArgumentParser()
    ServerArgs.add_cli_args(parser)
    return [a.dest for a in parser._actions if a.dest != "help"]


def test_every_server_flag_has_a_check() -> None:
    missing = [d for d in _parser_dests() if d not in FLAG_CHECKS]
    assert not missing, f"server flags without an entry in FLAG_CHECKS: {missing}"
    stale = [k for k in FLAG_CHECKS if k not in _parser_dests()]
    assert not stale, f"FLAG_CHECKS entries for flags that no longer exist: {stale}"


@pytest.mark.parametrize("flag", sorted(FLAG_CHECKS))
def test_server_flag_changes_behaviour(flag: str, ctx: Ctx, request: Any) -> None:
    check = FLAG_CHECKS[flag]
    extra = [request.getfixturevalue(n) for n in check.__code__.co_varnames[1:check.__code__.co_argcount]]
    check(ctx, *extra)


@pytest.mark.parametrize("argv, needle", [
    (["--stream-interval", "0"], "stream_interval"), (["--watchdog-timeout", "0"], "watchdog_timeout"),
    (["--lora-paths", "x"], "--lora-paths"), (["--enable-lora"], "--enable-lora"),
])
def test_unsupported_or_invalid_flags_are_usage_errors(argv: list[str], needle: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as e:
        prepare_server_args(argv)
    assert e.value.code == 2 and needle in capsys.readouterr().err
