"""End-to-end constrained generation through an in-process Scheduler.

Every output of the regex and schema suites must be valid, on the shipped model (which
writes JSON-shaped text) and on a random model (which fights the mask at every step),
greedy and seeded-sampled, with each suite submitted as one batch. Around that: mixed
batches, invalid grammars, aborts, retraction under memory pressure and jump-forward.

A constraint with an unbounded repetition (``[a-z]+``, an unbounded number) lets a model
loop, but the token budget closes every output in time (issue 14): every request of the
suites must finish by ``stop`` with a valid output, also with ``max_new_tokens`` set to
the grammar's minimum.  Tests that abort or cut requests on purpose still check their
``length``-finished outputs token by token to be a legal *prefix*.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass

import jsonschema
import pytest
from grammar_suite import REGEX_SUITE, SCHEMA_SUITE
from scheduler_utils import Result, abort, make_scheduler, run_to_completion, submit

from sglite_runtime.constrained.grammar_cache import make_key
from sglite_runtime.managers.grammar_manager import validate_sampling_params
from sglite_runtime.sampling.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

GREEDY = {"temperature": 0}
SAMPLED = {"temperature": 1.0, "top_p": 0.95, "seed": 1234}
# Long enough that every bounded constraint of the suites finishes; only unbounded loops hit it.
MAX_NEW = 256
# Share of a suite's requests that must finish by "stop": all of them, since the token
# budget forces even a looping model to close its output in time.
MIN_STOP_SHARE = 1.0


@dataclass
class Case:
    rid: str
    key: tuple[str, str]  # grammar kind and spec, as the scheduler compiles it
    sampling: dict
    check: object  # callable(text) -> None, raising on invalid output


def _regex_check(pattern: str):
    def check(text: str) -> None:
        assert re.fullmatch(pattern, text), f"{pattern!r} does not match {text!r}"
    return check


def _schema_check(schema: dict):
    def check(text: str) -> None:
        jsonschema.validate(json.loads(text), schema)
    return check


def regex_cases(sampling: dict) -> list[Case]:
    return [Case(f"r{i}", ("regex", p), {"regex": p, **sampling}, _regex_check(p)) for i, p in enumerate(REGEX_SUITE)]


def schema_cases(sampling: dict) -> list[Case]:
    return [Case(f"j{i}", ("json", json.dumps(s)), {"json_schema": json.dumps(s), **sampling}, _schema_check(s))
            for i, s in enumerate(SCHEMA_SUITE)]


@pytest.fixture(scope="module")
def tok(shipped_model_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shipped_model_path)


def chat_prompt(tok, text: str) -> list[int]:
    return list(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True)["input_ids"])


def run_all(s, results: dict[str, Result] | None = None) -> dict[str, Result]:
    """run_to_completion, but an idle step (only grammar compiles pending) sleeps a little:
    a spinning loop starves the compile thread of the GIL and burns the helper's step cap."""
    last = [s.forward_ct]

    def on_step(sched, _steps):
        if sched.forward_ct == last[0]:
            time.sleep(0.0005)
        last[0] = sched.forward_ct

    return run_to_completion(s, results, on_step=on_step)


def run_cases(s, prompt: list[int], cases: list[Case], max_new: int = MAX_NEW, **submit_kw) -> dict[str, Result]:
    for c in cases:
        submit(s, c.rid, prompt, {"max_new_tokens": max_new, **c.sampling}, **submit_kw)
    return run_all(s)


def verify(s, tok, cases: list[Case], res: dict[str, Result], min_stop_share: float = MIN_STOP_SHARE) -> dict:
    """Stop-finished outputs validate fully; length-finished ones are legal prefixes.

    Returns counts for the report: requests, finished by stop, validated.
    """
    backend = s.grammar_manager.backend
    stopped = validated = 0
    for c in cases:
        r = res[c.rid]
        kind = r.finish_reason["type"]
        assert kind in ("stop", "length"), (c.rid, r.finish_reason)
        ids = list(r.output_ids)
        if kind == "stop" and ids and ids[-1] in s.eos_token_ids:
            ids = ids[:-1]  # the stop token is emitted, but is not part of the text
        grammar = backend.new_grammar(backend.compile(make_key(*c.key)))
        assert grammar.accept_tokens(ids) == len(ids), f"{c.rid}: an output token breaks the grammar"
        if kind == "stop":
            stopped += 1
            assert grammar.is_accepting(), f"{c.rid} stopped in a non-accepting state"
            c.check(tok.decode(ids))
            validated += 1
    stats = {"requests": len(cases), "stop": stopped, "validated": validated}
    logger.info("constrained suite: %s", stats)
    assert stopped >= min_stop_share * len(cases), stats
    return stats


# ---- 100% valid, both models, greedy and sampled ------------------------------------------------
@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
@pytest.mark.parametrize("suite", ["regex", "schema"])
@pytest.mark.parametrize("model", ["shipped_model_path", "tiny_llama_path"])
def test_suite_outputs_valid(model, suite, sampling, tok, request):
    s = make_scheduler(request.getfixturevalue(model))
    if suite == "regex":
        cases, prompt = regex_cases(sampling), chat_prompt(tok, "Answer in the requested format.")
    else:
        cases, prompt = schema_cases(sampling), chat_prompt(tok, "Give me a JSON record.")
    res = run_cases(s, prompt, cases)
    stats = verify(s, tok, cases, res)
    request.node.user_properties.append(("stats", stats))


# ---- complete within budget: max_new_tokens = the grammar's minimum, and a little more -------------
@pytest.mark.parametrize("model,sampling,jump_mode", [
    ("shipped_model_path", GREEDY, "token"), ("shipped_model_path", SAMPLED, "token"),
    ("tiny_llama_path", GREEDY, "token"), ("tiny_llama_path", SAMPLED, "token"),
    ("shipped_model_path", SAMPLED, "string"),  # re-spelled forced strings must fit too
], ids=["shipped-greedy", "shipped-sampled", "random-greedy", "random-sampled", "shipped-sampled-string-jump"])
def test_suites_close_at_the_minimum_budget(model, sampling, jump_mode, tok, request):
    s = make_scheduler(request.getfixturevalue(model), jump_forward_mode=jump_mode)
    backend = s.grammar_manager.backend
    prompt = chat_prompt(tok, "Give me a JSON record.")
    cases = regex_cases(sampling) + schema_cases(sampling)
    budgets = {}
    for extra in (0, 2):
        for c in cases:
            need = backend.new_grammar(backend.compile(make_key(*c.key))).min_tokens_to_accept()
            rid = f"{c.rid}+{extra}"
            budgets[rid] = need + extra
            submit(s, rid, prompt, {**c.sampling, "max_new_tokens": need + extra})
    res = run_all(s)
    for extra in (0, 2):
        for c in cases:
            r = res[f"{c.rid}+{extra}"]
            assert r.finish_reason["type"] == "stop", (c.key, extra, r.finish_reason)
            ids = [t for t in r.output_ids if t not in s.eos_token_ids]
            assert len(r.output_ids) <= budgets[f"{c.rid}+{extra}"]
            c.check(tok.decode(ids))


def test_budget_below_minimum_rejected_with_400(shipped_model_path, tok):
    s = make_scheduler(shipped_model_path)
    prompt = chat_prompt(tok, "Give me a JSON record.")
    schema = SCHEMA_SUITE[11]
    submit(s, "small", prompt, {"max_new_tokens": 3, "json_schema": json.dumps(schema)})
    res = run_all(s)
    reason = res["small"].finish_reason
    assert reason["type"] == "abort" and reason["status_code"] == 400, reason
    assert "max_new_tokens=3" in reason["message"] and "at least" in reason["message"], reason
    assert res["small"].output_ids == []


# ---- mixing constrained and unconstrained rows ---------------------------------------------------
def test_mixed_batch_leaves_unconstrained_rows_unchanged(shipped_model_path, tok):
    free_sp = {"max_new_tokens": 24, "temperature": 0, "ignore_eos": True}
    texts = ["The list", "A dictionary maps", "def f(x):\n    return", '{"name": "']
    prompts = [tok.encode(t) for t in texts]

    alone = make_scheduler(shipped_model_path)
    for i, p in enumerate(prompts):
        submit(alone, f"u{i}", p, free_sp)
    ref = run_all(alone)

    mixed = make_scheduler(shipped_model_path)
    cases = schema_cases(GREEDY)[::2] + regex_cases(GREEDY)[::3]
    prompt = chat_prompt(tok, "Give me a JSON record.")
    for j, c in enumerate(cases):  # interleave so masked and unmasked rows share every batch
        submit(mixed, c.rid, prompt, {"max_new_tokens": MAX_NEW, **c.sampling})
        if j < len(prompts):
            submit(mixed, f"u{j}", prompts[j], free_sp)
    res = run_all(mixed)
    for i in range(len(prompts)):
        assert res[f"u{i}"].output_ids == ref[f"u{i}"].output_ids
        assert res[f"u{i}"].finish_reason == {"type": "length", "length": 24}
    verify(mixed, tok, cases, res)


# ---- invalid grammars ----------------------------------------------------------------------------
INVALID = [
    {"regex": "[.*"},
    {"json_schema": json.dumps({"type": "object", "properties": {"foo": "bar"}})},
    {"json_schema": "INVALID"},
]


@pytest.mark.parametrize("bad", INVALID, ids=["regex", "schema", "not-json"])
def test_invalid_grammar_rejected_up_front(bad):
    with pytest.raises(ValueError, match="Invalid"):
        validate_sampling_params(SamplingParams(**bad))


def test_invalid_grammar_aborts_with_400_and_scheduler_keeps_serving(shipped_model_path, tok):
    # Bypasses the TokenizerManager's check, as a second client of the scheduler would.
    s = make_scheduler(shipped_model_path)
    prompt = chat_prompt(tok, "Give me a JSON record.")
    for i, bad in enumerate(INVALID):
        submit(s, f"bad{i}", prompt, {"max_new_tokens": 16, "temperature": 0, **bad})
    good = schema_cases(GREEDY)[12:13]
    res = run_cases(s, prompt, good, max_new=64)
    for i in range(len(INVALID)):
        reason = res[f"bad{i}"].finish_reason
        assert reason["type"] == "abort" and reason["status_code"] == 400, reason
        assert reason["message"].startswith("Invalid grammar"), reason
        assert res[f"bad{i}"].output_ids == []
    verify(s, tok, good, res, min_stop_share=1.0)
    # The same bad spec again fails fast from the cache, and serving goes on.
    submit(s, "again", prompt, {"max_new_tokens": 16, **INVALID[0]})
    res = run_cases(s, prompt, regex_cases(GREEDY)[:3], max_new=32)
    assert res["again"].finish_reason["status_code"] == 400
    verify(s, tok, regex_cases(GREEDY)[:3], res, min_stop_share=1.0)


# ---- aborts and retraction keep the pool whole ------------------------------------------------
def test_abort_constrained_mid_run_pool_clean(tiny_llama_path, tok):
    s = make_scheduler(tiny_llama_path, max_running_requests=4)
    prompt = chat_prompt(tok, "Give me a JSON record.")
    cases = schema_cases(GREEDY)[12:] + regex_cases(GREEDY)[:6]
    for c in cases:
        submit(s, c.rid, prompt, {"max_new_tokens": 64, **c.sampling})
    # "fresh" arrives with an uncompiled grammar: aborted while still in the grammar queue.
    fresh = {"type": "object", "properties": {"zz": {"type": "integer"}}, "required": ["zz"]}
    submit(s, "fresh", prompt, {"max_new_tokens": 64, "json_schema": json.dumps(fresh)})
    abort(s, "fresh")
    results: dict[str, Result] = {}
    for _ in range(6):
        s.step()
    running = [r.rid for r in (s.running_batch.reqs if s.running_batch else [])]
    victims = (running[:2] or [cases[0].rid]) + [cases[-1].rid]  # running and waiting
    for rid in victims:
        abort(s, rid)
    res = run_all(s, results)  # check_memory() asserts no KV leaked
    for rid in victims + ["fresh"]:
        assert res[rid].finish_reason["type"] == "abort", (rid, res[rid].finish_reason)
    survivors = [c for c in cases if c.rid not in victims]
    verify(s, tok, survivors, res, min_stop_share=0.5)


def test_retraction_with_constrained_requests(shipped_model_path, tok):
    # Distinct prompts so each request owns its KV; long-ish outputs, so decode runs dry.
    cases = schema_cases(GREEDY)[12:] + regex_cases(GREEDY)[10:22]
    prompts = {c.rid: chat_prompt(tok, f"Give me record number {i} as JSON, please.") for i, c in enumerate(cases)}

    def run(total: int, **kw):
        s = make_scheduler(shipped_model_path, max_total_tokens=total, **kw)
        for c in cases:
            submit(s, c.rid, prompts[c.rid], {"max_new_tokens": 96, **c.sampling})
        return s, run_all(s)

    free_s, free = run(8192)
    used = sum(len(prompts[c.rid]) + len(free[c.rid].output_ids) for c in cases)
    tight, pressured = run(max(256, int(used * 0.3)) // 16 * 16, init_new_token_ratio=0.05)
    assert tight.num_retracted > 0, "the test must actually exercise retraction"
    for c in cases:
        assert pressured[c.rid].output_ids == free[c.rid].output_ids, c.rid
    verify(tight, tok, cases, pressured)


# ---- jump-forward --------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["shipped_model_path", "tiny_llama_path"])
def test_jump_forward_on_off_identical(model, tok, request):
    path = request.getfixturevalue(model)
    prompt = chat_prompt(tok, "Give me a JSON record.")
    outs = {}
    for jf in (True, False):
        s = make_scheduler(path, disable_jump_forward=not jf)
        cases = schema_cases(GREEDY)
        outs[jf] = (s, run_cases(s, prompt, cases))
    (on_s, on), (off_s, off) = outs[True], outs[False]
    for c in cases:
        assert on[c.rid].output_ids == off[c.rid].output_ids, c.rid
        assert on[c.rid].finish_reason["type"] == off[c.rid].finish_reason["type"], c.rid
    assert off_s.num_jump_forward_tokens == 0
    # Fixed keys and enums ("circle", "answer", ...) are forced token runs on this tokenizer.
    assert on_s.num_jump_forward_tokens > 0
    request.node.user_properties.append(("jump_forward_tokens", on_s.num_jump_forward_tokens))
    verify(on_s, tok, cases, on)


@pytest.mark.parametrize("suite", ["regex", "schema"])
def test_string_jump_forward_outputs_valid(shipped_model_path, tok, suite):
    """String mode skips whole forced strings (re-tokenized): not identical to decoding, but
    every output must still satisfy its constraint, and it must skip more than token mode."""
    prompt = chat_prompt(tok, "Give me a JSON record.")
    cases = (regex_cases if suite == "regex" else schema_cases)(GREEDY)
    s = make_scheduler(shipped_model_path, jump_forward_mode="string")
    res = run_cases(s, prompt, cases)
    verify(s, tok, cases, res)
    if suite == "schema":
        assert s.num_jump_forward_tokens > 0
