"""Constrained decoding end to end: mask overhead, jump-forward, and an HF + xgrammar peer.

    python benchmarks/bench_constrained.py [--model PATH] [--repeats 3] [--num-extract 32]

(a) TPOT, constrained vs unconstrained, same model, same batch of 8: the constrained run is
    JSON-schema decoding (jump-forward off, so the steps are the same kind); the
    unconstrained run replays each request with ``ignore_eos`` and the very output length
    its constrained twin produced, so both runs have the same decode steps at the same batch
    sizes. Per-output-token time = decode wall time / decode steps. Target: ratio <= 1.1.
(b) Requests/s with jump-forward on vs off on JSON extraction (schemas with fixed keys,
    ``const`` and enum values), all requests submitted at once. Target: ratio >= 1.5.
(d) The token budget (complete within max_new_tokens): TPOT of JSON decoding with unbounded
    strings under a tight budget (the budget mask is active for most steps) vs the same
    replayed unconstrained; per-call mask cost with and without the budget limit; the time to
    compile a grammar and to compute its per-state token distances.
(c) Peer: HF ``generate`` + ``xgrammar.contrib.hf.LogitsProcessor`` on the (b) requests, one
    static left-padded batch, greedy.

The Scheduler is driven in-process (no ZMQ, no detokenizer process), so on a small shared
CPU the timings are the engine's, not the IPC's. Every output is validated.
Writes benchmarks/results/constrained.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "runtime"))

from common import SHIPPED, load_hf, median, write_results  # noqa: E402

logger = logging.getLogger("bench_constrained")

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
                   "city": {"type": "string", "maxLength": 12}},
    "required": ["name", "age", "city"], "additionalProperties": False,
}
# (a): a list of records, so each constrained output is long (tens of tokens) and bounded.
PEOPLE = {"type": "array", "items": PERSON, "minItems": 4, "maxItems": 4}
# (b): extraction with fixed, multi-token keys and constant/enum values: what jump-forward skips.
ORDER = {
    "type": "object",
    "properties": {
        "record_type": {"const": "purchase_order_v2"},
        "customer_full_name": {"type": "string", "maxLength": 16},
        "order_confirmation_number": {"type": "integer", "minimum": 0, "maximum": 99999},
        "shipping_method": {"enum": ["standard_ground_shipping", "express_overnight_delivery"]},
        "gift_wrapping_requested": {"type": "boolean"},
        "currency_code": {"const": "EUR"},
    },
    "required": ["record_type", "customer_full_name", "order_confirmation_number", "shipping_method",
                 "gift_wrapping_requested", "currency_code"],
    "additionalProperties": False,
}
NAMES = ["Alice", "Bob", "Chen", "Dana", "Emil", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kofi", "Lena"]


def chat_ids(tok, text: str) -> list[int]:
    return list(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True)["input_ids"])


def strip_eos(ids: list[int], eos: set[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] in eos else ids


def string_level_forceable(backend, schema: dict, ids: list[int]) -> int:
    """How many of ``ids`` a *string-level* jump-forward (``jump_forward_str``: the forced
    bytes, whatever their tokenization) would have skipped along this very output."""
    from sglite_runtime.constrained.grammar_cache import make_key
    from sglite_runtime.constrained.jump_forward import jump_forward_str

    g = backend.new_grammar(backend.compile(make_key("json", json.dumps(schema))))
    tb = g.compiled.token_bytes
    i = n = 0
    while i < len(ids):
        forced = jump_forward_str(g)
        j, covered = i, 0
        while forced and j < len(ids) and covered + len(tb[ids[j]]) <= len(forced[0]):
            covered += len(tb[ids[j]])
            j += 1
        n += j - i
        j = max(j, i + 1)
        g.accept_tokens(ids[i:j])
        i = j
    return n


def validate(tok, schema: dict, ids: list[int], eos: set[int]) -> bool:
    import jsonschema

    ids = strip_eos(ids, eos)
    try:
        jsonschema.validate(json.loads(tok.decode(ids)), schema)
        return True
    except Exception:
        return False


# ---- driving a scheduler with per-step timing --------------------------------------------------
def drive(s, reqs: list[tuple[str, list[int], dict]]) -> dict[str, Any]:
    """Submit all requests at once, run to idle; time extend and decode steps apart."""
    from scheduler_utils import collect, submit

    timing = {"decode_s": 0.0, "decode_steps": 0, "decode_rows": 0, "extend_s": 0.0, "extend_steps": 0}
    inner = s.run_batch

    def timed_run_batch(batch):
        kind = "extend" if batch.forward_mode.is_extend() else "decode"
        rows = len(batch.reqs)
        t = time.perf_counter()
        inner(batch)
        timing[f"{kind}_s"] += time.perf_counter() - t
        timing[f"{kind}_steps"] += 1
        if kind == "decode":
            timing["decode_rows"] += rows

    s.run_batch = timed_run_batch
    jf0 = s.num_jump_forward_tokens
    t0 = time.perf_counter()
    for rid, ids, sp in reqs:
        submit(s, rid, ids, sp)
    res: dict = {}
    while s.has_work():
        if not s.step():
            # Only a compile in the grammar pool is pending: yield the GIL to it rather than
            # spin (scheduler_utils.run_to_completion counts such spins toward its step cap).
            time.sleep(0.0005)
        collect(s, res)
    collect(s, res)
    s.check_memory()
    timing["wall_s"] = time.perf_counter() - t0
    s.run_batch = inner
    timing["jump_forward_tokens"] = s.num_jump_forward_tokens - jf0
    timing["results"] = res
    return timing


# ---- (a) TPOT -----------------------------------------------------------------------------------
def bench_tpot(model: str, tok, repeats: int, batch: int = 8) -> dict:
    from scheduler_utils import make_scheduler

    s = make_scheduler(model, disable_jump_forward=True)
    eos = set(s.eos_token_ids)
    prompts = [chat_ids(tok, f"Give me a JSON list of four people who know {NAMES[i % len(NAMES)]}.") for i in range(batch)]
    con = [(f"c{i}", p, {"max_new_tokens": 512, "temperature": 0, "json_schema": json.dumps(PEOPLE)})
           for i, p in enumerate(prompts)]
    first = drive(s, con)  # warm-up: compiles the grammar, fills the mask-row caches
    lengths = [len(first["results"][f"c{i}"].output_ids) for i in range(batch)]
    valid = sum(validate(tok, PEOPLE, first["results"][f"c{i}"].output_ids, eos) for i in range(batch))
    free = [(f"u{i}", p, {"max_new_tokens": n, "temperature": 0, "ignore_eos": True})
            for i, (p, n) in enumerate(zip(prompts, lengths))]
    drive(s, free)  # warm-up
    per = {"constrained": [], "unconstrained": []}
    for _ in range(repeats):  # alternate, so drift on a shared machine hits both alike
        for name, reqs in (("constrained", con), ("unconstrained", free)):
            t = drive(s, reqs)
            per[name].append(t["decode_s"] / t["decode_steps"])
            steps = t["decode_steps"]
    # The fastest repeat: the shared machine only ever adds time, to either side.
    c_ms, u_ms = min(per["constrained"]) * 1e3, min(per["unconstrained"]) * 1e3
    out = {"batch": batch, "output_lengths": lengths, "valid": f"{valid}/{batch}", "decode_steps": steps,
           "tpot_constrained_ms": round(c_ms, 3), "tpot_unconstrained_ms": round(u_ms, 3),
           "ratio": round(c_ms / u_ms, 3), "target": "<= 1.1"}
    s.grammar_manager.shutdown()
    return out


# ---- (d) token budget -------------------------------------------------------------------------
EVENT = {"type": "object", "properties": {"title": {"type": "string"}, "guests": {"type": "array", "items": {"type": "string"}},
                                          "price": {"type": "number"}}, "required": ["title", "guests", "price"]}


def bench_budget(model: str, tok, repeats: int, batch: int = 8) -> dict:
    import random

    import numpy as np

    from sglite_runtime.constrained.compile_worker import token_distances
    from sglite_runtime.constrained.grammar_cache import make_key
    from scheduler_utils import make_scheduler

    s = make_scheduler(model, disable_jump_forward=True)
    eos, backend = set(s.eos_token_ids), s.grammar_manager.backend
    g0 = backend.new_grammar(backend.compile(make_key("json", json.dumps(EVENT))))
    minimum = g0.min_tokens_to_accept()
    out: dict[str, Any] = {"schema": "EVENT (unbounded strings, array, number)", "minimum_tokens": minimum}
    prompts = [chat_ids(tok, f"Describe party number {i} as JSON.") for i in range(batch)]
    for budget in (minimum + 4, 48):
        con = [(f"c{i}", p, {"max_new_tokens": budget, "temperature": 1.0, "seed": i, "json_schema": json.dumps(EVENT)})
               for i, p in enumerate(prompts)]
        first = drive(s, con)
        res = [first["results"][f"c{i}"] for i in range(batch)]
        lengths = [len(r.output_ids) for r in res]
        stop = sum(r.finish_reason["type"] == "stop" for r in res)
        valid = sum(validate(tok, EVENT, r.output_ids, eos) for r in res)
        free = [(f"u{i}", p, {"max_new_tokens": n, "temperature": 1.0, "seed": i, "ignore_eos": True})
                for i, (p, n) in enumerate(zip(prompts, lengths))]
        drive(s, free)
        per: dict[str, list[float]] = {"c": [], "u": []}
        for _ in range(repeats):
            for name, reqs in (("c", con), ("u", free)):
                t = drive(s, reqs)
                per[name].append(t["decode_s"] / t["decode_steps"])
        c_ms, u_ms = min(per["c"]) * 1e3, min(per["u"]) * 1e3
        out[f"max_new_tokens={budget}"] = {"valid": f"{valid}/{batch}", "finish_stop": f"{stop}/{batch}",
                                           "output_lengths": lengths, "tpot_constrained_ms": round(c_ms, 3),
                                           "tpot_unconstrained_ms": round(u_ms, 3), "ratio": round(c_ms / u_ms, 3)}
    # Mask cost per call along random walks: unlimited vs budget-limited (cached rows).
    mask = backend.allocate_vocab_mask(s.vocab_size, 1, "cpu")
    rng, timings = random.Random(0), {"unlimited": [], "budget_limited": []}
    for walk in range(40):
        g = g0.copy()
        g.set_token_budget(minimum + 6 if walk % 2 else None)
        key = "budget_limited" if walk % 2 else "unlimited"
        while not g.is_terminated() and (g.remaining_tokens() is None or g.remaining_tokens() > 0):
            t = time.perf_counter()
            g.fill_vocab_mask(mask, 0)
            timings[key].append(time.perf_counter() - t)
            allowed = g.allowed_token_ids()
            tid = rng.choice(allowed)
            if tid in eos or len(timings[key]) > 4000:
                break
            g.accept_token(tid)
    out["mask_us_per_call_median"] = {k: round(float(np.median(v)) * 1e6, 2) for k, v in timings.items()}
    compile_ms = {}
    for name, schema in (("PEOPLE", PEOPLE), ("EVENT", EVENT), ("ORDER", ORDER)):
        t = time.perf_counter()
        c = backend.compile(make_key("json", json.dumps(schema)))
        total = time.perf_counter() - t
        t = time.perf_counter()
        token_distances(c.index)
        compile_ms[name] = {"compile_ms": round(total * 1e3, 1), "distances_ms": round((time.perf_counter() - t) * 1e3, 1),
                            "states": len(c.distances)}
    out["compile"] = compile_ms
    s.grammar_manager.shutdown()
    return out


# ---- (b) jump-forward on vs off -----------------------------------------------------------------
def extraction_requests(tok, n: int) -> list[tuple[str, list[int], dict]]:
    reqs = []
    for i in range(n):
        text = (f"Extract the order as JSON: {NAMES[i % len(NAMES)]} ordered item {i} with order number "
                f"{1000 + 37 * i}, {'express' if i % 2 else 'standard'} shipping, gift wrap {'yes' if i % 3 else 'no'}.")
        reqs.append((f"x{i}", chat_ids(tok, text), {"max_new_tokens": 256, "temperature": 0, "json_schema": json.dumps(ORDER)}))
    return reqs


def bench_jump_forward(model: str, tok, repeats: int, n: int, mode: str = "token") -> tuple[dict, list]:
    from scheduler_utils import make_scheduler

    reqs = extraction_requests(tok, n)
    runs: dict[bool, Any] = {}
    walls: dict[bool, list[float]] = {True: [], False: []}
    scheds = {jf: make_scheduler(model, disable_jump_forward=not jf, jump_forward_mode=mode) for jf in (True, False)}
    for jf, s in scheds.items():
        drive(s, reqs)  # warm-up (compile, caches); the radix cache then holds the prompts in both
    for _ in range(repeats):
        for jf, s in scheds.items():
            s.flush_cache()  # every repeat prefills its prompts from scratch
            runs[jf] = drive(s, reqs)
            walls[jf].append(runs[jf]["wall_s"])
    eos = set(scheds[True].eos_token_ids)
    on, off = runs[True], runs[False]
    same = all(on["results"][r].output_ids == off["results"][r].output_ids for r, _, _ in reqs)
    out_tokens = sum(len(on["results"][r].output_ids) for r, _, _ in reqs)
    valid = sum(validate(tok, ORDER, on["results"][r].output_ids, eos) for r, _, _ in reqs)
    rps = {jf: n / median(w) for jf, w in walls.items()}
    result = {
        "requests": n, "output_tokens": out_tokens, "valid": f"{valid}/{n}", "identical_outputs_on_off": same,
        "jump_forward_tokens": on["jump_forward_tokens"],
        "forced_share": round(on["jump_forward_tokens"] / out_tokens, 3),
        "req_per_s_on": round(rps[True], 3), "req_per_s_off": round(rps[False], 3),
        "ratio": round(rps[True] / rps[False], 3), "target": ">= 1.5",
        "steps_on": {"extend": on["extend_steps"], "decode": on["decode_steps"]},
        "steps_off": {"extend": off["extend_steps"], "decode": off["decode_steps"]},
        "ms_per_step_on": {"extend": round(1e3 * on["extend_s"] / max(on["extend_steps"], 1), 2),
                           "decode": round(1e3 * on["decode_s"] / max(on["decode_steps"], 1), 2)},
        "ms_per_step_off": {"extend": round(1e3 * off["extend_s"] / max(off["extend_steps"], 1), 2),
                            "decode": round(1e3 * off["decode_s"] / max(off["decode_steps"], 1), 2)},
        "string_level_forceable_tokens": sum(
            string_level_forceable(scheds[True].grammar_manager.backend, ORDER, strip_eos(off["results"][r].output_ids, eos))
            for r, _, _ in reqs),
        "sample_output": tok.decode(strip_eos(on["results"]["x0"].output_ids, eos)),
    }
    result["string_level_forceable_share"] = round(result["string_level_forceable_tokens"] / out_tokens, 3)
    for s in scheds.values():
        s.grammar_manager.shutdown()
    return result, reqs


# ---- (c) HF generate + xgrammar -----------------------------------------------------------------
def bench_hf_xgrammar(model_path: str, tok, reqs, repeats: int) -> dict:
    import torch
    import xgrammar as xgr
    from xgrammar.contrib.hf import LogitsProcessor

    model = load_hf(model_path)
    eos = [0, 4] if model_path == SHIPPED else [tok.eos_token_id]
    info = xgr.TokenizerInfo.from_huggingface(tok, vocab_size=model.config.vocab_size, stop_token_ids=eos)
    compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(ORDER), any_whitespace=False)
    prompts = [p for _, p, _ in reqs]
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for j, p in enumerate(prompts):
        ids[j, width - len(p):] = torch.tensor(p)
        mask[j, width - len(p):] = 1

    def run():
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=256, do_sample=False,
                                  eos_token_id=eos, pad_token_id=0, logits_processor=[LogitsProcessor(compiled)])

    run()  # warm-up
    walls, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = run()
        walls.append(time.perf_counter() - t)
    gen = out[:, width:].tolist()
    valid = 0
    for row in gen:
        row = row[: next((k + 1 for k, t in enumerate(row) if t in eos), len(row))]
        valid += validate(tok, ORDER, row, set(eos))
    wall = median(walls)
    return {"requests": len(reqs), "valid": f"{valid}/{len(reqs)}", "wall_s": round(wall, 3),
            "req_per_s": round(len(reqs) / wall, 3), "xgrammar_any_whitespace": False,
            "note": "one static left-padded batch: runs until its longest row ends"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=SHIPPED)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--num-extract", type=int, default=32)
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--only-budget", action="store_true", help="run (d) only (merged into the results file)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.model)
    budget = bench_budget(args.model, tok, args.repeats)
    print(f"(d) token budget: {json.dumps(budget)}")
    if args.only_budget:
        path = os.path.join(HERE, "results", "constrained.json")
        payload = json.load(open(path)) if os.path.exists(path) else {"model": args.model}
        payload["token_budget"] = budget
        write_results("constrained", payload)
        return
    tpot = bench_tpot(args.model, tok, args.repeats)
    print(f"(a) TPOT batch {tpot['batch']}: constrained {tpot['tpot_constrained_ms']} ms, unconstrained "
          f"{tpot['tpot_unconstrained_ms']} ms -> {tpot['ratio']}x (target <= 1.1); valid {tpot['valid']}")
    jf, reqs = bench_jump_forward(args.model, tok, args.repeats, args.num_extract)
    print(f"(b) jump-forward: {jf['req_per_s_on']} req/s on vs {jf['req_per_s_off']} off -> {jf['ratio']}x "
          f"(target >= 1.5); forced {jf['jump_forward_tokens']}/{jf['output_tokens']} tokens; "
          f"identical {jf['identical_outputs_on_off']}; valid {jf['valid']}; string-level jump-forward would "
          f"force {jf['string_level_forceable_tokens']} tokens; ms/step on {jf['ms_per_step_on']} off {jf['ms_per_step_off']}")
    jf_str, _ = bench_jump_forward(args.model, tok, args.repeats, args.num_extract, mode="string")
    print(f"(b') string-level jump-forward: {jf_str['req_per_s_on']} req/s on vs {jf_str['req_per_s_off']} off -> "
          f"{jf_str['ratio']}x (target >= 1.5); forced {jf_str['jump_forward_tokens']}/{jf_str['output_tokens']} "
          f"tokens; identical to no jump {jf_str['identical_outputs_on_off']}; valid {jf_str['valid']}")
    payload = {"model": args.model, "tpot": tpot, "jump_forward": jf, "jump_forward_string_mode": jf_str,
               "token_budget": budget}
    if not args.skip_peer:
        peer = bench_hf_xgrammar(args.model, tok, reqs, args.repeats)
        payload["hf_xgrammar"] = peer
        payload["sglite_vs_hf_xgrammar_req_per_s"] = {
            "jump_forward_on": round(jf["req_per_s_on"] / peer["req_per_s"], 3),
            "jump_forward_off": round(jf["req_per_s_off"] / peer["req_per_s"], 3)}
        print(f"(c) HF generate + xgrammar: {peer['req_per_s']} req/s (valid {peer['valid']}); sglite / peer: "
              f"{payload['sglite_vs_hf_xgrammar_req_per_s']}")
    write_results("constrained", payload)


if __name__ == "__main__":
    main()
