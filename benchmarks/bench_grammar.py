"""Grammar engine benchmark, model-free and single-threaded (perf-anchors §8, scenario 6).

For every constraint (the test suites' schemas and regexes plus seeded synthetic schemas)
we record one token trace with a seeded random walk through sglite's mask, then replay that
same trace through each engine and time, per token, "produce the bitmask for the current
state + accept the sampled token".  Compile time is measured per constraint with caches off.

Engines (same tokenizer for all):
* ``sglite``   - OutlinesGrammarBackend: compile = regex + Index + state caches; mask = cached
  row copy.  Reported cold (first request after compile) and warm (rows already cached).
* ``outlines`` - raw outlines-core: ``Index`` + ``Guide.write_mask_into`` + ``Guide.advance``.
* ``xgrammar`` - ``GrammarCompiler`` (cache off) + ``GrammarMatcher.fill_next_token_bitmask``.
* ``llguidance`` - ``LLMatcher`` + ``fill_next_token_bitmask`` + ``consume_token``.
* ``sglite-xgrammar`` - sglite's XGrammarBackend (``--grammar-backend xgrammar``): matcher
  mask + budget bookkeeping, same trace.

EBNF rows (second table): context-free grammars in SGLang's syntax plus ``json_object`` (JSON
nested to any depth) through sglite's router (``ebnf``/``json_object`` go to xgrammar), raw
xgrammar and llguidance (GBNF converted to Lark); outlines-core cannot express them.  Their
traces are seeded random walks of at most 48 tokens through sglite's own mask.

A trace token an engine rejects counts as an invalidation (different whitespace/format
semantics can cause these; sglite's own count must be 0).

Usage: python benchmarks/bench_grammar.py [--synthetic 150] [--out benchmarks/results/grammar.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from typing import Any, Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "structured"))

from grammar_suite import REGEX_SUITE, SCHEMA_SUITE  # noqa: E402
from structured_helpers import SHIPPED_TOKENIZER, distances_to_accept, random_walk, train_byte_level_bpe  # noqa: E402

from sglite_runtime.constrained.backend_router import RoutedGrammarBackend  # noqa: E402
from sglite_runtime.constrained.json_budget import JSON_OBJECT_EBNF  # noqa: E402
from sglite_runtime.constrained.outlines_backend import OutlinesGrammarBackend  # noqa: E402

logger = logging.getLogger("bench_grammar")


# -- inputs ---------------------------------------------------------------------------
def load_tokenizer() -> tuple[Any, str]:
    """The shipped tokenizer, else a locally trained byte-level BPE saved to a temp dir."""
    from transformers import PreTrainedTokenizerFast

    path, name = SHIPPED_TOKENIZER, "sglite-tiny (shipped)"
    if not os.path.exists(path):
        path = os.path.join(tempfile.mkdtemp(), "tokenizer.json")
        train_byte_level_bpe(1000).save(path)
        name = "locally trained byte-level BPE"
    return PreTrainedTokenizerFast(tokenizer_file=path, eos_token="<|endoftext|>"), name


def synthetic_schemas(n: int, seed: int = 0) -> list[dict]:
    """Seeded JSON schemas in the style of json-mode-eval: objects of typed fields."""
    rng = random.Random(seed)
    words = "id name title price qty tags owner email city zip score level active kind note date".split()

    def field(depth: int) -> dict:
        roll = rng.random()
        if depth < 2 and roll < 0.15:
            return obj(depth + 1)
        if depth < 2 and roll < 0.3:
            lo = rng.randint(0, 2)
            return {"type": "array", "items": field(depth + 1), "minItems": lo, "maxItems": lo + rng.randint(1, 4)}
        return rng.choice([
            lambda: {"type": "string", "maxLength": rng.randint(3, 30)},
            lambda: {"type": "string"},
            lambda: {"type": "string", "enum": rng.sample(words, rng.randint(2, 5))},
            lambda: {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2,4}$"},
            # No "email": outlines-core's email regex times optional fields explodes its DFA
            # build (minutes, GBs of memory), which would stall the whole benchmark.
            lambda: {"type": "string", "format": rng.choice(["date", "uuid", "time"])},
            lambda: {"type": "integer", "minimum": 0, "maximum": rng.choice([9, 100, 5000])},
            lambda: {"type": "integer"},
            lambda: {"type": "number"},
            lambda: {"type": "boolean"},
            lambda: {"type": ["string", "null"]},
        ])()

    def obj(depth: int) -> dict:
        names = rng.sample(words, rng.randint(1, 5))
        props = {k: field(depth) for k in names}
        required = [k for k in names if rng.random() < 0.7]
        return {"type": "object", "properties": props, "required": required, "additionalProperties": False}

    return [obj(0) for _ in range(n)]


#: Context-free grammars (SGLang / xgrammar EBNF syntax) for the EBNF rows.
EBNF_SUITE = {
    "arith": r'''root ::= expr
expr ::= term (("+" | "-") term)*
term ::= factor (("*" | "/") factor)*
factor ::= [0-9]+ | "(" expr ")"''',
    "yes_no": 'root ::= "yes" | "no"',
    "string_list": r'''root ::= "[" ws item (ws "," ws item)* ws "]"
item ::= "\"" [a-z]+ "\""
ws ::= [ ]?''',
    "sexpr": r'''root ::= sexpr
sexpr ::= atom | "(" sexpr (" " sexpr)* ")"
atom ::= [a-z]+ | [0-9]+''',
    "sql_select": r'''root ::= "SELECT " cols " FROM " ident (" WHERE " cond)? ";"
cols ::= "*" | ident (", " ident)*
cond ::= ident " " op " " value (" AND " cond)?
op ::= "=" | "<" | ">"
value ::= [0-9]+ | "'" [a-z ]* "'"
ident ::= [a-z_] [a-z0-9_]*''',
}


def ebnf_suite() -> list[tuple[str, str]]:
    return [("ebnf", g) for g in EBNF_SUITE.values()] + [("json_object", "")]


def record_cfg_traces(backend: RoutedGrammarBackend, keys: list, seed: int, walks: int = 4) -> dict:
    """Seeded random walks (<= 48 tokens, stop at acceptance half the time) per CFG key."""
    rng = random.Random(seed)
    traces = {}
    for key in keys:
        compiled = backend.compile(key)
        ids: list[int] = []
        for _ in range(walks):
            grammar = backend.new_grammar(compiled)
            grammar.set_token_budget(48)  # json_object closes in time; EBNF walks are cut
            walk: list[int] = []
            while len(walk) < 48 and not grammar.is_terminated():
                allowed = [t for t in grammar.allowed_token_ids() if t not in backend.cfg.stop_ids]
                if not allowed or (grammar.is_accepting() and rng.random() < 0.5):
                    break
                tid = rng.choice(allowed)
                grammar.accept_token(tid)
                walk.append(tid)
            if len(walk) > len(ids):
                ids = walk
        traces[key] = ids
    return traces


def constraint_suite(n_synthetic: int) -> list[tuple[str, str]]:
    keys = [("json", json.dumps(s)) for s in SCHEMA_SUITE + synthetic_schemas(n_synthetic)]
    return keys + [("regex", r) for r in REGEX_SUITE]


# -- engines ----------------------------------------------------------------------------
class Engine:
    """compile(key) -> compiled; start(compiled) -> state; step(state, mask, tid) -> ok."""

    name = "?"

    def compile(self, key: tuple[str, str]) -> Any: ...
    def start(self, compiled: Any) -> Any: ...
    def step(self, state: Any, mask: torch.Tensor, tid: int | None) -> bool: ...


class SgliteEngine(Engine):
    name = "sglite"

    def __init__(self, backend: OutlinesGrammarBackend):
        self.backend = backend

    def compile(self, key):
        return self.backend.compile(key)

    def start(self, compiled):
        return self.backend.new_grammar(compiled)

    def step(self, grammar, mask, tid):
        grammar.fill_vocab_mask(mask, 0)
        return tid is None or grammar.accept_token(tid)


class OutlinesEngine(Engine):
    name = "outlines-core"

    def __init__(self, backend: OutlinesGrammarBackend):
        import outlines_core

        self.oc = outlines_core
        self.backend = backend

    def compile(self, key):
        # Same regex as sglite (incl. its numeric-bound rewrite) so the traces replay.
        return self.oc.Index(self.backend.to_regex(*key), self.backend.vocabulary)

    def start(self, index):
        return self.oc.Guide(index)

    def step(self, guide, mask, tid):
        guide.write_mask_into(mask.data_ptr(), mask.shape[1], 4)
        if tid is None:
            return True
        try:
            guide.advance(tid, return_tokens=False)
        except Exception:
            return False
        return True


class XGrammarEngine(Engine):
    name = "xgrammar"

    def __init__(self, tokenizer, vocab_size: int):
        import xgrammar

        self.xgr = xgrammar
        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile(self, key):
        kind, spec = key
        if kind == "json":
            return self.compiler.compile_json_schema(spec, any_whitespace=True)
        if kind in ("ebnf", "json_object"):
            return self.compiler.compile_grammar(spec if kind == "ebnf" else JSON_OBJECT_EBNF)
        return self.compiler.compile_regex(spec)

    def start(self, compiled):
        return self.xgr.GrammarMatcher(compiled)

    def step(self, matcher, mask, tid):
        matcher.fill_next_token_bitmask(mask, 0)
        return tid is None or matcher.accept_token(tid)


class LLGuidanceEngine(Engine):
    name = "llguidance"

    def __init__(self, tokenizer, vocab_size: int):
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg = llguidance
        self.fill = llguidance.torch.fill_next_token_bitmask
        self.tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)

    def compile(self, key):
        kind, spec = key
        if kind == "json":
            grammar = self.llg.LLMatcher.grammar_from_json_schema(spec, defaults={"whitespace_flexible": True})
        elif kind in ("ebnf", "json_object"):
            from llguidance._grammar_from import grammar_from

            grammar = grammar_from("ebnf", spec if kind == "ebnf" else JSON_OBJECT_EBNF)
        else:
            grammar = self.llg.LLMatcher.grammar_from_regex(spec)
        matcher = self.llg.LLMatcher(self.tok, grammar, log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return grammar, matcher

    def start(self, compiled):
        return compiled[1].deep_copy()

    def step(self, matcher, mask, tid):
        self.fill(matcher, mask, 0)
        return tid is None or (matcher.consume_token(tid) and not matcher.is_error())


# -- measurement ------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summarize(values: list[float]) -> dict[str, float]:
    return {
        "p50": percentile(values, 50), "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"), "n": len(values),
    }


def record_traces(backend: OutlinesGrammarBackend, keys: list, seed: int) -> dict:
    """One seeded token trace per constraint (sglite's own mask picks the tokens)."""
    rng = random.Random(seed)
    traces = {}
    for key in keys:
        grammar = backend.new_grammar(backend.compile(key))
        data, ids, finished = random_walk(grammar, rng, free_steps=30, dist=distances_to_accept(grammar))
        if finished:
            traces[key] = ids
    return traces


def run_engine(engine: Engine, keys: list, traces: dict, vocab_size: int, passes: int) -> dict:
    mask = torch.full((1, (vocab_size + 31) // 32), -1, dtype=torch.int32)
    compile_ms: list[float] = []
    per_pass: list[list[float]] = [[] for _ in range(passes)]
    failures, invalidations = [], 0
    for key in keys:
        t0 = time.perf_counter()
        try:
            compiled = engine.compile(key)
        except Exception as exc:  # an engine that cannot handle this constraint
            failures.append(f"{key[0]}: {str(exc).splitlines()[0][:120]}")
            continue
        compile_ms.append((time.perf_counter() - t0) * 1e3)
        trace = traces.get(key)
        if trace is None:
            continue
        for p in range(passes):
            state = engine.start(compiled)
            for tid in trace + [None]:  # the final step fills the mask where EOS is allowed
                t0 = time.perf_counter_ns()
                ok = engine.step(state, mask, tid)
                per_pass[p].append((time.perf_counter_ns() - t0) / 1e3)
                if not ok:
                    invalidations += p == 0
                    break
    out = {"compile_ms": summarize(compile_ms), "mask_us": summarize(per_pass[0]),
           "compile_failures": len(failures), "failure_examples": failures[:5],
           "invalidated_traces": invalidations}
    if passes > 1:
        out["mask_us_warm"] = summarize(per_pass[1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--synthetic", type=int, default=150, help="extra seeded schemas")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "grammar.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)

    tokenizer, tok_name = load_tokenizer()
    vocab_size = len(tokenizer)
    backend = OutlinesGrammarBackend(tokenizer, vocab_size=vocab_size)
    keys = constraint_suite(args.synthetic)
    traces = record_traces(backend, keys, args.seed)
    logger.info("tokenizer: %s (V=%d); %d constraints, %d traces, %d tokens",
                tok_name, vocab_size, len(keys), len(traces), sum(map(len, traces.values())))

    factories: list[tuple[str, Callable[[], Engine]]] = [
        ("sglite", lambda: SgliteEngine(OutlinesGrammarBackend(tokenizer, vocab_size=vocab_size))),
        ("outlines-core", lambda: OutlinesEngine(backend)),
        ("xgrammar", lambda: XGrammarEngine(tokenizer, vocab_size)),
        ("llguidance", lambda: LLGuidanceEngine(tokenizer, vocab_size)),
        ("sglite-xgrammar", lambda: SgliteEngine(RoutedGrammarBackend("xgrammar", tokenizer, vocab_size=vocab_size))),
    ]
    results: dict[str, Any] = {}
    for name, make in factories:
        try:
            engine = make()
        except ImportError as exc:
            results[name] = {"skipped": f"not importable: {exc}"}
            logger.info("%s: not importable (%s)", name, exc)
            continue
        logger.info("running %s ...", name)
        results[name] = run_engine(engine, keys, traces, vocab_size, passes=2 if name == "sglite" else 1)

    base = results["sglite"]
    header = f"{'engine':15s} {'mask p50':>9s} {'mask p99':>9s} {'mask mean':>9s} {'compile p50':>12s} {'compile mean':>12s} {'fail':>5s} {'inval':>5s}  ratio p50/p99/compile vs sglite"
    print(f"\ntokenizer {tok_name}, V={vocab_size}; {len(keys)} constraints, {len(traces)} traces; µs per token, ms per compile")
    print(header)
    rows = [(n, r) for n, r in results.items() if "skipped" not in r]
    if "mask_us_warm" in base:
        rows.insert(1, ("sglite (warm)", {**base, "mask_us": base["mask_us_warm"]}))
    for name, r in rows:
        m, c = r["mask_us"], r["compile_ms"]
        ratio = (f"{m['p50'] / base['mask_us']['p50']:.2f}x / {m['p99'] / base['mask_us']['p99']:.2f}x / "
                 f"{c['p50'] / base['compile_ms']['p50']:.2f}x")
        print(f"{name:15s} {m['p50']:9.2f} {m['p99']:9.2f} {m['mean']:9.2f} {c['p50']:12.2f} {c['mean']:12.2f} "
              f"{r['compile_failures']:5d} {r['invalidated_traces']:5d}  {ratio}")
    for name, r in results.items():
        if "skipped" in r:
            print(f"{name:15s} skipped: {r['skipped']}")
    targets = {"mask_p50_us": 50.0, "mask_p99_us": 1000.0, "compile_p50_ms": 50.0}
    met = {
        "mask_p50_us": base["mask_us"]["p50"] <= targets["mask_p50_us"],
        "mask_p99_us": base["mask_us"]["p99"] <= targets["mask_p99_us"],
        "compile_p50_ms": base["compile_ms"]["p50"] <= targets["compile_p50_ms"],
    }
    print(f"targets {targets} met: {met}")

    # EBNF rows: context-free grammars and json_object at any depth (outlines-core cannot).
    router = RoutedGrammarBackend("outlines", tokenizer, vocab_size=vocab_size)
    cfg_keys = ebnf_suite()
    cfg_traces = record_cfg_traces(router, cfg_keys, args.seed)
    ebnf_results: dict[str, Any] = {}
    for name, make in [("sglite", lambda: SgliteEngine(RoutedGrammarBackend("outlines", tokenizer,
                                                                             vocab_size=vocab_size))),
                       ("xgrammar", lambda: XGrammarEngine(tokenizer, vocab_size)),
                       ("llguidance", lambda: LLGuidanceEngine(tokenizer, vocab_size))]:
        try:
            engine = make()
        except ImportError as exc:
            ebnf_results[name] = {"skipped": f"not importable: {exc}"}
            continue
        ebnf_results[name] = run_engine(engine, cfg_keys, cfg_traces, vocab_size, passes=2 if name == "sglite" else 1)
    print(f"\nEBNF rows: {len(cfg_keys)} grammars ({', '.join(EBNF_SUITE)}, json_object), "
          f"{sum(map(len, cfg_traces.values()))} trace tokens; µs per token, ms per compile")
    print(header.split("  ratio")[0])
    for name, r in ebnf_results.items():
        if "skipped" in r:
            print(f"{name:15s} skipped: {r['skipped']}")
            continue
        for label, m in [(name, r["mask_us"])] + ([(name + " (warm)", r["mask_us_warm"])] if "mask_us_warm" in r else []):
            c = r["compile_ms"]
            print(f"{label:15s} {m['p50']:9.2f} {m['p99']:9.2f} {m['mean']:9.2f} {c['p50']:12.2f} {c['mean']:12.2f} "
                  f"{r['compile_failures']:5d} {r['invalidated_traces']:5d}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({
            "scenario": "6: grammar engine, model-free, single thread",
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpu_count": os.cpu_count()},
            "tokenizer": tok_name, "vocab_size": vocab_size, "num_constraints": len(keys),
            "num_traces": len(traces), "num_trace_tokens": sum(map(len, traces.values())),
            "whitespace_pattern": backend.whitespace_pattern,
            "results": results, "targets": targets, "targets_met": met,
            "ebnf": {"grammars": list(EBNF_SUITE) + ["json_object"],
                     "num_trace_tokens": sum(map(len, cfg_traces.values())), "results": ebnf_results},
        }, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
