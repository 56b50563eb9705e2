"""Every sampling field and every ``/generate`` field works or is refused (the field half of the
option walk; the flag half is tests/test_options.py).

Sampling fields run as one batch on an in-process Scheduler with the shipped model, each with a
predicate that fails when the field is ignored; decoding-side fields run on the detokenizer.
SGLang names sglite does not implement must be refused with an error naming them.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

import pytest

from option_checks import Ctx, _app_client, covered, run_to_completion, submit
from sglite_runtime.managers.io_struct import FinishLength, FinishReason, FinishStop
from sglite_runtime.server_args import ServerArgs


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: Any) -> Ctx:
    return Ctx(tmp_path_factory)


# ---- sampling fields --------------------------------------------------------------------------
GREEDY = {"max_new_tokens": 16, "temperature": 0}
HOT = {"max_new_tokens": 16, "temperature": 3.0, "seed": 0, "ignore_eos": True}
LONG = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}


def _sampling_cases(g: list[int], tok: Any) -> dict[str, tuple[dict, Callable[[Any, dict], bool]]]:
    """field -> (request, predicate on (result, all results)); ``g`` is the greedy output, which
    ends with EOS after a few tokens, as the shipped model answers."""
    text = tok.decode(g, skip_special_tokens=True)
    word = text.split()[2]  # a word in the middle of the answer
    k = next(i for i in range(1, len(g)) if g[i] not in g[:i])  # a token's first occurrence
    return {
        "max_new_tokens": (GREEDY | {"max_new_tokens": 3}, lambda r, a: r.output_ids == g[:3]),
        "min_new_tokens": (GREEDY | {"min_new_tokens": len(g) + 2}, lambda r, a: len(r.output_ids) >= len(g) + 2),
        "temperature": (HOT, lambda r, a: r.output_ids[:len(g)] != g),
        "top_p": (HOT | {"top_p": 1e-6}, lambda r, a: r.output_ids[:len(g)] == a["greedy_long"].output_ids[:len(g)]),
        "top_k": (HOT | {"top_k": 1}, lambda r, a: r.output_ids == a["greedy_long"].output_ids[:16]),
        "min_p": (HOT | {"min_p": 1.0}, lambda r, a: r.output_ids == a["greedy_long"].output_ids[:16]),
        "frequency_penalty": (LONG | {"frequency_penalty": 2.0}, lambda r, a: r.output_ids != a["long"].output_ids),
        "presence_penalty": (LONG | {"presence_penalty": 2.0}, lambda r, a: r.output_ids != a["long"].output_ids),
        "repetition_penalty": (LONG | {"repetition_penalty": 2.0}, lambda r, a: r.output_ids != a["long"].output_ids),
        "stop": (GREEDY | {"stop": word}, lambda r, a: r.finish_reason == {"type": "stop", "matched": word}
                 and len(r.output_ids) < len(g)),
        "stop_token_ids": (GREEDY | {"stop_token_ids": [g[k]]}, lambda r, a: r.output_ids == g[:k + 1]),
        "ignore_eos": (GREEDY | {"ignore_eos": True}, lambda r, a: len(r.output_ids) == 16 > len(g)),
        "seed": (HOT | {"seed": 1}, lambda r, a: r.output_ids != a["temperature"].output_ids),
        "stop_regex": (GREEDY | {"stop_regex": rf"{re.escape(word)}\b"},
                       lambda r, a: r.finish_reason.get("regex") and len(r.output_ids) < len(g)),
        "logit_bias": (GREEDY | {"logit_bias": {str(g[0]): -100.0}}, lambda r, a: r.output_ids[0] != g[0]),
        "regex": (GREEDY | {"regex": "[0-9]{3}"}, lambda r, a: re.fullmatch("[0-9]{3}", tok.decode(r.output_ids))),
        "json_schema": (GREEDY | {"json_schema": '{"type": "boolean"}'},
                        lambda r, a: isinstance(json.loads(tok.decode(r.output_ids)), bool)),
        "choices": (GREEDY | {"choices": ["Paris", "Rome"]}, lambda r, a: tok.decode(r.output_ids) in ("Paris", "Rome")),
    }


# Fields the scheduler only passes on: checked on the detokenizer (in the test below) or by the
# TokenizerManager, which expands n.
DETOKENIZER_FIELDS = ("skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim")
SAMPLING_COVERED = {
    "n": covered("tests/runtime/test_engine.py::test_n_samples_share_prompt_kv"),
    "ebnf": covered("tests/server/test_ebnf.py::test_generate_ebnf"),
    "require_reasoning": covered("tests/server/test_reasoning.py::test_grammar_applies_after_thinking"),
}


def _detok(tok: Any, ids: list[int], reason: FinishReason | None = None, **sp: Any) -> str:
    from sglite_runtime.managers.detokenizer_manager import DetokenizerManager
    from sglite_runtime.managers.io_struct import BatchTokenIDOut

    msg = BatchTokenIDOut(["r"], [ids], [reason or FinishLength(length=len(ids))], [1], [len(ids)], [0],
                          [sp.get("skip_special_tokens", True)], [sp.get("no_stop_trim", False)],
                          [None], [None], [None], [None], [sp.get("spaces_between_special_tokens", True)])
    return DetokenizerManager(tok).handle_batch_token_id_out(msg).texts[0]


def test_every_sampling_field_changes_behaviour(ctx: Ctx) -> None:
    from sglite_runtime.sampling.sampling_params import _USER_FIELDS

    g = ctx.greedy.output_ids
    cases = _sampling_cases(g, ctx.tok)
    checked = set(cases) | set(DETOKENIZER_FIELDS) | set(SAMPLING_COVERED)
    assert checked == set(_USER_FIELDS), f"SamplingParams fields without a check: {checked ^ set(_USER_FIELDS)}"
    for check in SAMPLING_COVERED.values():
        check(ctx)
    names = ["greedy_long", "long"] + sorted(cases)
    reqs = [HOT | {"temperature": 0}, LONG] + [cases[n][0] for n in sorted(cases)]
    s = ctx.base
    for name, sp in zip(names, reqs):
        submit(s, name, ctx.prompt, sp)
    res = run_to_completion(s)
    bad = [n for n in sorted(cases) if not cases[n][1](res[n], res)]
    assert not bad, {n: (res[n].output_ids, res[n].finish_reason) for n in bad}

    # Decoding-side fields, on the greedy answer (which holds special tokens).
    spaced = _detok(ctx.tok, g, skip_special_tokens=False)
    assert _detok(ctx.tok, g) == ctx.tok.decode(g, skip_special_tokens=True) != spaced
    assert spaced == " ".join(p for p in re.split(r"\s*(<\|[a-z]+\|>)\s*", spaced) if p) or "<|" in spaced
    joined = _detok(ctx.tok, g, skip_special_tokens=False, spaces_between_special_tokens=False)
    assert joined == ctx.tok.decode(g, skip_special_tokens=False) != spaced
    word_stop = FinishStop(matched=cases["stop"][0]["stop"])
    full = ctx.tok.decode(g, skip_special_tokens=True)
    assert _detok(ctx.tok, g, word_stop) == full[: full.find(cases["stop"][0]["stop"])]
    assert _detok(ctx.tok, g, word_stop, no_stop_trim=True) == full
    rx = FinishStop(matched=r"\bo\w", regex=True)
    assert _detok(ctx.tok, g, rx) == full[: re.search(r"\bo\w", full).start()]


@pytest.mark.parametrize("field", ["structural_tag", "custom_params", "stream_interval", "lora_path"])
def test_unsupported_sampling_fields_are_refused(field: str) -> None:
    from sglite_runtime.sampling.sampling_params import _USER_FIELDS, SamplingParams

    if field in _USER_FIELDS:
        pytest.skip(f"{field} is implemented (checked above)")
    with pytest.raises(ValueError, match=repr(field)):
        SamplingParams.from_dict({field: None})


def test_invalid_stop_regex_is_refused() -> None:
    from sglite_runtime.sampling.sampling_params import SamplingParams

    with pytest.raises(ValueError, match="stop_regex"):
        SamplingParams.from_dict({"stop_regex": "(unclosed"}).verify()


# ---- /generate fields -------------------------------------------------------------------------
REQUEST_CHECKS: dict[str, Callable[..., None]] = {
    "text": covered("tests/server/test_native.py::test_generate_single"),
    "input_ids": covered("tests/server/test_native.py::test_generate_batch_and_input_ids"),
    "sampling_params": covered("tests/server/test_native.py::test_generate_single"),
    "rid": covered("tests/server/test_native.py::test_abort_all"),
    "return_logprob": covered("tests/server/test_native.py::test_generate_logprobs"),
    "logprob_start_len": covered("tests/server/test_native.py::test_generate_logprobs"),
    "top_logprobs_num": covered("tests/server/test_native.py::test_generate_logprobs"),
    "return_text_in_logprobs": covered("tests/server/test_native.py::test_generate_logprobs"),
    "stream": covered("tests/server/test_native.py::test_generate_stream"),
    "image_data": covered("tests/server/test_errors.py::test_generate_bad_input"),
    # What sglang-router adds to every body it forwards: accepted at SGLang's default, else a 400.
    "model": covered("tests/distributed/test_router.py::test_requests_through_router_succeed"),
    **{f: (lambda _: None) for f in ("log_metrics", "return_hidden_states", "return_entropy",
                                     "return_bytes", "background", "no_logs")},
}

ROUTER_DEFAULTS = {"model": "m", "log_metrics": True, "return_hidden_states": False, "return_entropy": False,
                   "return_bytes": False, "background": False, "no_logs": False}

# SGLang's GenerateReqInput fields that sglite does not implement: each must be a 400 naming it.
SGLANG_ONLY_FIELDS = ("lora_path", "custom_logit_processor", "session_params",
                      "modalities", "input_embeds", "token_ids_logprob", "bootstrap_host", "data_parallel_rank")


def test_every_generate_field_has_a_check() -> None:
    from sglite_runtime.entrypoints.openai_protocol import GenerateRequest

    fields = set(GenerateRequest.model_fields)
    assert fields == set(REQUEST_CHECKS), f"unchecked /generate fields: {fields ^ set(REQUEST_CHECKS)}"
    for check in REQUEST_CHECKS.values():
        check(None)


@pytest.mark.parametrize("field", SGLANG_ONLY_FIELDS)
def test_unsupported_generate_fields_are_400(field: str) -> None:
    with _app_client(ServerArgs()) as c:
        r = c.post("/generate", json={"text": "x", field: "v"})
    assert r.status_code == 400 and repr(field) in r.text and "not supported" in r.text


@pytest.mark.parametrize("field", [f for f, v in ROUTER_DEFAULTS.items() if isinstance(v, bool)])
def test_router_fields_only_at_their_default(field: str) -> None:
    """The body sglang-router forwards validates; a non-default value of any of its flags is a 400."""
    from sglite_runtime.entrypoints.openai_protocol import GenerateRequest

    GenerateRequest(text="x", **ROUTER_DEFAULTS)
    with _app_client(ServerArgs()) as c:
        r = c.post("/generate", json={"text": "x", field: not ROUTER_DEFAULTS[field]})
    assert r.status_code == 400 and field in r.text and "not supported" in r.text, r.text


@pytest.mark.parametrize("knob", ["enable_precache_with_tracing", "enable_parallel_encoding"])
def test_unimplemented_global_config_knobs_are_refused(knob: str) -> None:
    import sglite

    with pytest.raises(AttributeError, match=knob):
        setattr(sglite.global_config, knob, False)
    sglite.global_config.verbosity = sglite.global_config.verbosity  # the real ones still work


# ---- small request models: /flush_cache's body, response_format.json_schema --------------------
_RF_FIELDS = "tests/server/test_response_format_fields.py::test_strict_and_description_never_loosen_the_schema"
SMALL_MODEL_CHECKS: dict[str, dict[str, Callable[..., None]]] = {
    "FlushCacheRequest": {
        "empty_cache": covered("tests/runtime/test_flush_empty_cache.py::test_empty_cache_only_when_asked_and_only_on_cuda"),
    },
    # strict/name/description are accepted and change nothing: the output is always constrained.
    "JsonSchemaFormat": {f: covered(_RF_FIELDS) for f in ("name", "schema_", "strict", "description")},
}


def test_every_small_request_model_field_has_a_check() -> None:
    from sglite_runtime.entrypoints import openai_protocol

    for model, checks in SMALL_MODEL_CHECKS.items():
        fields = set(getattr(openai_protocol, model).model_fields)
        assert fields == set(checks), f"unchecked {model} fields: {fields ^ set(checks)}"
        for check in checks.values():
            check(None)
