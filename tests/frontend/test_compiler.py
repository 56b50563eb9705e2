"""Request-graph compiler without a model: tracer, graph JSON/validation, plan, NotCompilable,
compile modes, and the server's ProgramExecutor over the fake runtime (compiled == interpreted)."""
from __future__ import annotations

import asyncio
import copy
import json
import logging
from typing import Any, AsyncIterator

import pytest
from fake_runtime import CANNED, FakeBackend, FakeModel

import sglite
from sglite.lang.compiler import CompiledProgramState
from sglite.protocol.graph import MAX_NODES, ProgramGraph, validate_graph
from sglite.protocol.graph_nodes import Gen, Join, Select, VarBegin, VarRef, op_of
from sglite.lang.tracer import NotCompilable
from sglite_runtime.managers.program_executor import ProgramExecutor

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


# -- programs --------------------------------------------------------------------------------------
@sglite.function
def few_shot(s, question):
    s += "Q: What is the capital of France?\nA: Paris\n"
    s += "Q: " + question + "\nA:" + sglite.gen("answer", stop="\n", max_tokens=16)


@sglite.function
def mt_bench(s, q1, q2):
    s += sglite.system("You are a helpful assistant.")
    s += sglite.user(q1)
    s += sglite.assistant(sglite.gen("a1", max_tokens=8))
    with s.user():
        s += q2
    with s.assistant():
        s += sglite.gen("a2", max_tokens=8)


@sglite.function
def choose(s):
    s += "Is the sky blue? Answer:" + sglite.select("v", choices=[" True", " False", " Unknown"])


@sglite.function
def sot(s, k):
    s += "Topic: tips.\n"
    forks = s.fork(k)
    forks += lambda i: f"Tip {i + 1}:" + sglite.gen("tip", max_tokens=6, stop="\n")
    forks.join()
    for i, tip in enumerate(s["tip"]):
        s += f"\n{i + 1}." + tip
    s += "\nSummary:" + sglite.gen("summary", max_tokens=6)


@sglite.function
def expert(s, question):
    s += "Question: " + question + "\nExpert:" + sglite.gen("expert", max_tokens=4, stop=".")
    s += "\nFor instance," + s["expert"] + " would say " + sglite.gen("answer", max_tokens=4)


@sglite.function
def json_like(s):
    with s.var_scope("json"):
        s += '{"name": ' + sglite.gen_string("name", max_tokens=8) + ', "n": ' + sglite.gen_int("n", max_tokens=4)
        s += "}"


@sglite.function
def samples(s):
    s += "Say:" + sglite.gen("x", n=3, max_tokens=4)


@sglite.function
def branching(s):
    s += "Q:" + sglite.gen("a", max_tokens=4)
    if s["a"] == "yes":  # data-dependent: must not compile
        s += "!"


STATIC = [(few_shot, {"question": "Japan?"}), (mt_bench, {"q1": "Hi", "q2": "Bye"}), (choose, {}),
          (sot, {"k": 3}), (expert, {"question": "Capital of France?"}), (json_like, {}), (samples, {})]


# -- an in-process "server": ProgramExecutor over the fake model ------------------------------------
class FakeTM:
    """The TokenizerManager surface the executor uses, answered by a FakeModel."""

    def __init__(self, model: FakeModel) -> None:
        self.model = model

    def start(self) -> None:
        pass

    def model_info(self) -> dict[str, Any]:
        return self.model.model_info

    async def generate_request(self, obj: Any, request: Any = None) -> AsyncIterator[Any]:
        payload = {k: v for k, v in vars(obj).items() if v is not None and k not in ("rid", "image_data")}
        if not obj.text and obj.input_ids is None:
            raise ValueError("The input is empty: send a non-empty prompt.")
        await asyncio.sleep(0)
        if obj.stream:
            for chunk in self.model.stream(payload):
                yield chunk
        else:
            yield self.model.handle(payload)


class ProgramBackend(FakeBackend):
    """FakeBackend that also runs compiled graphs through the real ProgramExecutor."""

    def __init__(self, model: FakeModel) -> None:
        super().__init__(model)
        self.executor = ProgramExecutor(FakeTM(model))
        self.program_calls = 0

    def run_program(self, graph: Any, sampling_params: Any = None, stream: bool = False) -> Any:
        self.program_calls += 1
        graph = json.loads(json.dumps(graph))  # what travels is JSON
        if isinstance(graph, list):
            return asyncio.run(self.executor.run_batch(graph, sampling_params))
        if not stream:
            return asyncio.run(self.executor.collect(graph, sampling_params))

        async def all_events() -> list[dict]:
            return [ev async for ev in self.executor.run(graph, sampling_params, stream=True)]

        return iter(asyncio.run(all_events()))


@pytest.fixture
def pbackend() -> ProgramBackend:
    return ProgramBackend(FakeModel(chat_template=CHATML))


# -- tracing and graphs -----------------------------------------------------------------------------
def test_trace_nodes_and_json_round_trip():
    prog = sot.compile(k=2)
    g = prog.graph
    assert [s.id for s in g.streams] == [0, 1, 2]
    ops = [op_of(n) for n in g.streams[0].nodes]
    assert ops == ["fill", "fork", "join", "fill", "var_ref", "fill", "var_ref", "fill", "gen"]
    refs = [n for n in g.streams[0].nodes if isinstance(n, VarRef)]
    join = g.streams[0].nodes[2]
    assert isinstance(join, Join)
    assert [(r.source, r.index) for r in refs] == [(join.id, 0), (join.id, 1)]
    d = json.loads(prog.to_json())
    assert d["version"] == 1
    again = ProgramGraph.from_json(json.dumps(d))
    assert again.to_dict() == d
    kinds = {k for _, _, k in g.edges()}
    assert kinds == {"stream", "fork", "join", "data"}


def test_concat_with_variable_is_a_var_ref():
    g = expert.compile(question="Q?").graph
    ref = [n for n in g.streams[0].nodes if isinstance(n, VarRef)]
    assert len(ref) == 1 and ref[0].name == "expert" and ref[0].source == g.streams[0].nodes[1].id


def test_roles_var_scope_and_select_nodes():
    ops = [op_of(n) for n in mt_bench.compile("a", "b").graph.streams[0].nodes]
    assert ops.count("role_begin") == 5 and ops.count("gen") == 2
    g = json_like.compile().graph
    assert isinstance(g.streams[0].nodes[0], VarBegin)
    gen = [n for n in g.streams[0].nodes if isinstance(n, Gen)]
    assert gen[1].sampling_params["dtype"] == "int"
    sel = choose.compile().graph.streams[0].nodes[1]
    assert isinstance(sel, Select) and sel.method == "token_length_normalized" and len(sel.choices) == 3


@pytest.mark.parametrize("body, what", [
    (lambda s: s["a"] == "yes", "comparison"),
    (lambda s: bool(s["a"]), "truth test"),
    (lambda s: str(s["a"]), "str"),
    (lambda s: f"{s['a']}", "f-string"),
    (lambda s: int(s["a"]), "int()"),
    (lambda s: len(s["a"]), "len()"),
    (lambda s: list(s["a"]), "iteration"),
    (lambda s: s["a"].strip(), "attribute .strip"),
    (lambda s: s.text(), "s.text()"),
])
def test_data_dependence_is_not_compilable(body, what):
    @sglite.function
    def prog(s):
        s += "Q:" + sglite.gen("a", max_tokens=2)
        body(s)

    with pytest.raises(NotCompilable) as ei:
        prog.compile()
    err = ei.value
    assert what in err.reason
    assert err.filename == __file__ and err.source_line and "lambda s" in err.source_line


def test_reason_names_the_user_line():
    with pytest.raises(NotCompilable) as ei:
        branching.compile()
    assert ei.value.source_line == 'if s["a"] == "yes":  # data-dependent: must not compile'
    assert ei.value.lineno is not None and str(ei.value.lineno) in str(ei.value)


def test_swallowed_failure_still_fails_and_other_errors_wrap():
    @sglite.function
    def sneaky(s):
        s += sglite.gen("a", max_tokens=2)
        try:
            if s["a"]:
                s += "x"
        except Exception:
            pass

    with pytest.raises(NotCompilable, match="truth test"):
        sneaky.compile()

    @sglite.function
    def uses_json(s):
        s += sglite.gen("a", max_tokens=2)
        json.loads(s["a"])

    with pytest.raises(NotCompilable, match="TypeError"):
        uses_json.compile()


def test_unbound_arguments_and_unknown_variables():
    with pytest.raises(NotCompilable, match="not bound"):
        few_shot.compile()

    @sglite.function
    def unknown(s):
        s += s["nothing"]

    with pytest.raises(NotCompilable, match="nothing"):
        unknown.compile()


def test_plan_is_readable():
    plan = sot.compile(k=3).plan()
    assert "4 stream(s)" in plan and "static prefix" in plan
    assert "wave 2: " in plan and plan.count("gen tip") == 6  # 3 in the listing, 3 in wave 2
    assert "waits for streams [1, 2, 3]" in plan


# -- validation -------------------------------------------------------------------------------------
def _good() -> dict:
    return sot.compile(k=2).graph.to_dict()


def _mutate(fn):
    d = copy.deepcopy(_good())
    fn(d)
    return d


@pytest.mark.parametrize("bad, msg", [
    ([], "JSON object"),
    (_mutate(lambda d: d.update(version=2)), "version"),
    (_mutate(lambda d: d["streams"][0]["nodes"].append({"op": "exec", "id": 99})), "unknown op"),
    (_mutate(lambda d: d["streams"][0]["nodes"][-1]["sampling_params"].update(evil=1)), "unknown sampling"),
    (_mutate(lambda d: d["streams"][0]["nodes"].append({"op": "role_begin", "id": 99, "role": "root"})), "role"),
    (_mutate(lambda d: d["streams"][0]["nodes"].append({"op": "var_ref", "id": 100, "source": 200,
                                                        "name": "tip"})), "earlier"),
    (_mutate(lambda d: d["streams"][1]["nodes"].append({"op": "fill", "id": 50, "text": "late"})), "after the join"),
    (_mutate(lambda d: d["streams"][1].update(parent=None)), "parent"),
    (_mutate(lambda d: d["streams"][0]["nodes"][0].update(text="x" * 3_000_000)), "characters"),
    ({"version": 1, "streams": [{"id": 0, "nodes": [{"op": "fill", "id": i, "text": "a"}
                                                     for i in range(MAX_NODES + 1)]}]}, "nodes"),
])
def test_malformed_graphs_are_rejected(bad, msg):
    with pytest.raises(ValueError, match=msg):
        validate_graph(bad)


# -- modes ------------------------------------------------------------------------------------------
def test_auto_falls_back_with_a_reason(backend, caplog):
    with caplog.at_level(logging.INFO, logger="sglite.lang.compiler"):
        state = few_shot.run("Japan?", compile="auto", temperature=0)
    assert state["answer"] == CANNED  # interpreted: the fake backend has no run_program
    assert "cannot run compiled programs" in caplog.text
    with pytest.raises(NotCompilable):
        few_shot.run("Japan?", compile=True)


def test_auto_falls_back_on_dynamic_program(pbackend, caplog):
    with caplog.at_level(logging.INFO, logger="sglite.lang.compiler"):
        state = branching.run(backend=pbackend, compile="auto")
    assert isinstance(state["a"], str) and pbackend.program_calls == 0
    assert "comparison" in caplog.text
    with pytest.raises(NotCompilable):
        branching.run(backend=pbackend, compile=True)


# -- executor over the fake runtime: compiled == interpreted ----------------------------------------
@pytest.mark.parametrize("func, kwargs", STATIC, ids=[f.__name__ for f, _ in STATIC])
def test_compiled_equals_interpreted(pbackend, func, kwargs):
    ref = func.run(backend=pbackend, temperature=0, **kwargs)
    ref.sync()
    got = func.run(backend=pbackend, temperature=0, compile=True, **kwargs)
    assert pbackend.program_calls == 1
    for name in func.compile(**kwargs).graph.root_sources:
        assert got[name] == ref[name], name
    assert got.text() == ref.text()
    assert got.messages() == ref.messages()
    if func is choose:
        assert got.get_meta_info("v")["normalized_prompt_logprobs"] == ref.get_meta_info("v")[
            "normalized_prompt_logprobs"]


def test_streaming_text_iter(pbackend):
    state = few_shot.run("Japan?", backend=pbackend, temperature=0, stream=True, compile=True)
    whole = "".join(state.text_iter())
    assert whole == state.text() and whole.endswith(state["answer"])
    assert "".join(state.text_iter("answer")) == state["answer"]


def test_run_batch_is_one_call(pbackend):
    states = few_shot.run_batch([{"question": q} for q in ["A?", "B?", "C?"]], backend=pbackend,
                                temperature=0, compile=True)
    assert pbackend.program_calls == 1
    assert [("Q: " + q) in s.text() for s, q in zip(states, ["A?", "B?", "C?"])] == [True] * 3
    mixed = branching.run_batch([{}, {}], backend=pbackend, compile="auto")
    assert all(isinstance(s["a"], str) for s in mixed)


def test_errors_are_per_variable_and_reraised(pbackend):
    pbackend.model.fail_on = lambda p: "boom" if "Tip 2:" in str(p.get("text")) else None
    state = sot.run(k=3, backend=pbackend, compile=True)
    with pytest.raises(RuntimeError, match="boom"):
        state["summary"]  # the join re-raises the failed branch's error in the root
    assert isinstance(state.error(), RuntimeError)


def test_empty_prompt_error_type_survives(pbackend):
    @sglite.function
    def empty(s):
        s += sglite.gen("a", max_tokens=2)

    state = empty.run(backend=pbackend, compile=True)
    with pytest.raises(ValueError, match="empty"):
        state["a"]


def test_state_from_events_without_transport():
    g = few_shot.compile(question="x").graph
    st = CompiledProgramState(g)
    st.feed({"type": "error", "stream": 0, "name": "answer", "node": g.root_sources["answer"],
             "message": "bad", "error_type": "CustomError"})
    st.finish()
    with pytest.raises(RuntimeError, match="CustomError: bad"):
        st["answer"]
    with pytest.raises(KeyError):
        st["missing"]
