"""Grammar compiles that can be stopped (issue 13 item 3): worker processes killed at the
timeout and capped in memory, a clock that starts with the compile, failures cached for a
short while only, and bounded choices.

The pathological spec is ``a{100000}``: outlines-core builds a 100000-state automaton for
minutes, gigabytes on the way.  Here it must fail alone, within its timeout, while other
grammars keep compiling on the remaining workers.
"""

from __future__ import annotations

import time

import pytest

from sglite_runtime.constrained.base import MAX_CHOICES, InvalidGrammar, is_invalid
from sglite_runtime.constrained.grammar_cache import GrammarCache, make_key
from sglite_runtime.constrained.outlines_backend import OutlinesGrammar
from sglite_runtime.constrained.specs import validate_spec
from sglite_runtime.constrained.worker_pool import WorkerPool

PATHOLOGICAL = ("regex", "a{100000}")


@pytest.fixture
def pool():
    p = WorkerPool(size=2, mem_bytes=512 * 2**20)
    yield p
    p.shutdown()


def _wait(cache, future, limit: float = 20.0):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = cache.poll(future, timeout=0.05)
        if got is not None:
            return got
    raise AssertionError("compile did not finish")


def test_pathological_spec_fails_alone_and_its_worker_is_replaced(backend, pool):
    cache = GrammarCache(backend, compile_timeout_s=3.0, pool=pool)
    start = time.monotonic()
    _, slow = cache.get_or_submit(PATHOLOGICAL)
    # Meanwhile the other worker keeps compiling ordinary grammars.
    for i in range(4):
        grammar, fut = cache.get_or_submit(make_key("choices", ["yes", "no", f"maybe{i}"]))
        grammar = grammar if fut is None else _wait(cache, fut)
        assert isinstance(grammar, OutlinesGrammar)
    assert not slow.done(), "the pathological compile should still be running"
    failed = _wait(cache, slow)
    elapsed = time.monotonic() - start
    assert isinstance(failed, InvalidGrammar)
    assert "timed out" in failed.error or "out of memory" in failed.error, failed.error
    assert elapsed < 3.0 + 3.0, elapsed
    assert pool.killed >= 1 and len(pool.pids()) <= pool.size
    # The replacement worker compiles.
    grammar, fut = cache.get_or_submit(("regex", "[0-9]{4}"))
    assert isinstance(grammar if fut is None else _wait(cache, fut), OutlinesGrammar)
    cache.shutdown()


def test_timeout_counts_from_compile_start(backend, pool):
    # Two slow compiles hold both workers for ~2 s; the third request waits for a worker,
    # then compiles in milliseconds: it must not be charged for the wait.
    cache = GrammarCache(backend, compile_timeout_s=2.0, pool=pool)
    slow = [cache.get_or_submit(("regex", f"a{{{100000 + i}}}"))[1] for i in range(2)]
    _, quick = cache.get_or_submit(("regex", "[a-z]{2}"))
    got = _wait(cache, quick)
    assert isinstance(got, OutlinesGrammar), got
    assert all(is_invalid(_wait(cache, f)) for f in slow)
    cache.shutdown()


def test_failures_expire_and_reset_clears_them(backend, pool):
    cache = GrammarCache(backend, failure_ttl_s=0.3, pool=pool)
    key = ("regex", "[.*")
    grammar, fut = cache.get_or_submit(key)
    assert is_invalid(grammar if fut is None else _wait(cache, fut))
    again, fut = cache.get_or_submit(key)
    assert fut is None and is_invalid(again) and cache.misses == 1  # cached
    time.sleep(0.4)
    grammar, fut = cache.get_or_submit(key)
    assert cache.misses == 2  # expired: compiled again
    assert is_invalid(grammar if fut is None else _wait(cache, fut))
    cache.reset()
    assert cache.get_error(key) is None and len(cache) == 0
    cache.shutdown()


def test_compiled_index_survives_the_process_boundary(backend, pool):
    cache = GrammarCache(backend, pool=pool)
    grammar, fut = cache.get_or_submit(make_key("json", {"type": "object", "properties": {"a": {"type": "integer"}},
                                                         "required": ["a"]}))
    grammar = grammar if fut is None else _wait(cache, fut)
    direct = backend.new_grammar(backend.compile(grammar.compiled.key))
    assert grammar.compiled.distances == direct.compiled.distances
    assert sorted(grammar.allowed_token_ids()) == sorted(direct.allowed_token_ids())
    cache.shutdown()


@pytest.mark.parametrize("choices,reason", [
    ([str(i) for i in range(MAX_CHOICES + 1)], "too many choices"),
    (["x" * 5000], "too long"),
    ([f"{i:0>100}" for i in range(700)], "too long in total"),
])
def test_choices_are_bounded(choices, reason):
    with pytest.raises(ValueError, match=reason):
        validate_spec("choices", choices)


def test_schema_size_is_bounded():
    big = {"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(5000)}}
    with pytest.raises(ValueError, match="too long"):
        validate_spec("json", big)
