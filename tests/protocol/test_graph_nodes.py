"""Typed graph nodes (sglite.protocol.graph_nodes): the wire form is unchanged, and strict
decoding refuses every malformed shape with a message naming where.

``data/graph_golden_v1.json`` holds ``to_dict()``, ``to_json()`` and ``plan()`` of the programs
below as produced by the untyped (dict-node) graphs, before the nodes became structs: the
typed graphs must write the same bytes and read them back to equal nodes.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import msgspec
import pytest

import sglite
from sglite.protocol.graph import GRAPH_VERSION, ProgramGraph, Stream, decode_nodes, validate_graph
from sglite.protocol.graph_nodes import NODE_TYPES, Fill, Fork, Gen, Join, Select, VarRef, op_of

GOLDEN = json.loads((Path(__file__).parent / "data" / "graph_golden_v1.json").read_text(encoding="utf-8"))


@sglite.function
def few_shot(s, question):
    s += "Q: What is the capital of France?\nA: Paris\n"
    s += "Q: " + question + "\nA:" + sglite.gen("answer", stop="\n", max_tokens=16, temperature=0.5)


@sglite.function
def chat(s, q1, q2):
    s += sglite.system("You are a helpful assistant.")
    s += sglite.user(q1)
    s += sglite.assistant(sglite.gen("a1", max_tokens=8))
    with s.user():
        s += q2
    with s.assistant():
        s += sglite.gen("a2", max_tokens=8, regex="[a-z]+")


@sglite.function
def choose(s):
    s += "Is the sky blue? Answer:" + sglite.select("v", choices=[" True", " False"])
    s += sglite.select("w", choices=["a", "b"], choices_method=sglite.greedy_token_selection)


@sglite.function
def tips(s, k):
    s += "Topic: tips.\n"
    forks = s.fork(k)
    forks += lambda i: f"Tip {i + 1}:" + sglite.gen("tip", max_tokens=6, stop="\n")
    forks.join()
    for i, tip in enumerate(s["tip"]):
        s += f"\n{i + 1}." + tip
    s += "\nSummary:" + sglite.gen("summary", max_tokens=6)


@sglite.function
def concat_join(s):
    s += "Start."
    forks = s.fork(2)
    forks += " branch" + sglite.gen("b", max_tokens=3)
    forks.join(mode="concate_and_append")
    s["meta"] = {"k": [1, 2.5, None, True], "s": "x"}
    with s.var_scope("json"):
        s += '{"n": ' + sglite.gen_int("n", max_tokens=4) + "}"
    s += "Again:" + s["json"]


@sglite.function
def samples(s):
    s += "Say:" + sglite.gen("x", n=3, max_tokens=4)
    s += s["x"][1]


PROGRAMS = {"few_shot": (few_shot, {"question": "Japan?"}), "chat": (chat, {"q1": "Hi", "q2": "Bye"}),
            "choose": (choose, {}), "tips": (tips, {"k": 3}), "concat_join": (concat_join, {}),
            "samples": (samples, {})}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_wire_form_is_what_the_dict_graphs_wrote(name):
    func, kwargs = PROGRAMS[name]
    prog = func.compile(**kwargs)
    golden = GOLDEN[name]
    assert prog.graph.to_dict() == golden["graph"]
    assert prog.graph.to_json() == golden["json"]  # byte for byte: key order and defaults included
    assert prog.plan() == golden["plan"]
    again = validate_graph(json.loads(golden["json"]))
    assert again.streams == prog.graph.streams and again.name == name
    assert again.to_json() == golden["json"]


def test_every_op_is_covered_and_tags_are_the_wire_ops():
    seen = {n["op"] for g in GOLDEN.values() for s in g["graph"]["streams"] for n in s["nodes"]}
    tags = {op_of(cls(**_minimal(cls))) for cls in NODE_TYPES}
    assert tags == seen and len(tags) == len(NODE_TYPES) == 11  # the golden programs use every op


def _minimal(cls: type) -> dict:
    req = {"id": 0, "text": "t", "choices": ["a"], "role": "user", "name": "v", "n": 1, "children": [1],
           "fork": 0, "source": 0, "value": None}
    return {f: req[f] for f in cls.__struct_fields__ if f in req}


def test_defaults_are_filled_and_written():
    nodes = decode_nodes([{"op": "gen", "id": 0}, {"op": "select", "id": 1, "choices": ["x"]},
                          {"op": "join", "id": 2, "fork": 0, "children": []},
                          {"op": "var_ref", "id": 3, "source": 0, "name": "v"}])
    gen, sel, join, ref = nodes
    assert isinstance(gen, Gen) and gen.name is None and gen.sampling_params == {}
    assert isinstance(sel, Select) and sel.method == "token_length_normalized" and sel.temperature == 0.0
    assert isinstance(join, Join) and join.mode == "gather_variable"
    assert isinstance(ref, VarRef) and ref.index is None
    assert msgspec.to_builtins(sel) == {"op": "select", "id": 1, "name": None, "choices": ["x"],
                                        "temperature": 0.0, "method": "token_length_normalized"}
    assert Gen(id=5).sampling_params is not Gen(id=6).sampling_params  # no shared mutable default
    with pytest.raises(AttributeError):
        Fill(id=0, text="a").text = "b"  # type: ignore[misc]  # frozen: the tracer builds nodes whole


def _graph(*nodes: dict, **top) -> dict:
    return {"version": GRAPH_VERSION, "streams": [{"id": 0, "nodes": list(nodes)}], **top}


FILL = {"op": "fill", "id": 0, "text": "hi"}


@pytest.mark.parametrize("bad, needle", [
    (_graph({**FILL, "id": True}), "Expected `int`, got `bool` - at `$.streams[0].nodes[0].id`"),
    (_graph({**FILL, "id": "5"}), "Expected `int`, got `str` - at `$.streams[0].nodes[0].id`"),
    (_graph({**FILL, "id": 2**70}), "<= 9223372036854775807 - at `$.streams[0].nodes[0].id`"),
    (_graph({**FILL, "id": 1.0}), "Expected `int`, got `float`"),
    (_graph({"op": "exec", "id": 0}), "unknown op 'exec' at `$.streams[0].nodes[0]`"),
    (_graph({"id": 0, "text": "x"}), "missing required field `op` - at `$.streams[0].nodes[0]`"),
    (_graph({**FILL, "shell": "rm"}), "unknown field `shell` - at `$.streams[0].nodes[0]`"),
    (_graph({"op": "fill", "id": 0}), "missing required field `text`"),
    (_graph({"op": "fill", "id": 0, "text": 3}), "Expected `str`, got `int` - at `$.streams[0].nodes[0].text`"),
    (_graph({"op": "fork", "id": 0, "n": True, "children": [1]}), "`$.streams[0].nodes[0].n`"),
    (_graph({"op": "fork", "id": 0, "n": 1, "children": [False]}), "`$.streams[0].nodes[0].children[0]`"),
    (_graph({"op": "var_ref", "id": 1, "source": 0, "name": "v", "index": "1"}), "nodes[0].index`"),
    (_graph({"op": "select", "id": 0, "choices": ["a"], "temperature": True}), "got `bool`"),
    (_graph({"op": "select", "id": 0, "choices": ["a"], "temperature": float("nan")}), ">= 0.0"),
    (_graph({"op": "select", "id": 0, "choices": "ab"}), "Expected `array`, got `str`"),
    (_graph({"op": "gen", "id": 0, "sampling_params": []}), "Expected `object`, got `array`"),
    (_graph({"op": "set_var", "id": 0, "name": "v"}), "missing required field `value`"),
    (_graph({"op": "role_begin", "id": 0, "role": None}), "`$.streams[0].nodes[0].role`"),
    (_graph(FILL, extra=1), "unknown field `extra`"),
    (_graph(FILL, name=7), "`$.name`"),
    ({"version": 1, "streams": [{"id": 0, "nodes": [FILL], "color": "red"}]}, "unknown field `color`"),
    ({"version": 1, "streams": [{"id": 0, "index": "0", "nodes": []}]}, "`$.streams[0].index`"),
    ({"version": 1, "streams": [{"id": False, "nodes": []}]}, "`$.streams[0].id`"),
    ({"version": True, "streams": [{"id": 0, "nodes": []}]}, "`$.version`"),
    ({"version": 2, "streams": "anything: a newer version may differ"}, "unsupported version 2"),
    ({"version": 1, "streams": [5]}, "Expected `object`, got `int` - at `$.streams[0]`"),
    ({"version": 1, "streams": [{"id": 0, "nodes": {"op": "fill"}}]}, "`$.streams[0].nodes`"),
])
def test_malformed_shapes_are_refused_with_the_path(bad, needle):
    with pytest.raises(ValueError, match="^invalid program graph: ") as info:
        validate_graph(bad)
    assert needle in str(info.value)


@pytest.mark.parametrize("node, needle", [
    ({"op": "fork", "id": 0, "n": 2, "children": [1]}, "fork needs n child stream ids"),
    ({"op": "fork", "id": 0, "n": 10**6, "children": []}, "fork 'n' must be 1..256"),
    ({"op": "select", "id": 0, "choices": []}, "non-empty string choices"),
    ({"op": "select", "id": 0, "choices": ["a", ""]}, "non-empty string choices"),
    ({"op": "select", "id": 0, "choices": ["a"], "method": "vote"}, "unknown choices method"),
    ({"op": "var_begin", "id": 0, "name": ""}, "'name' must be a string of 1..256"),
    ({"op": "var_ref", "id": 0, "source": 9, "name": "v"}, "must be an earlier node"),
    ({"op": "join", "id": 0, "fork": 0, "children": [], "mode": "zip"}, "unknown join mode"),
    ({"op": "gen", "id": 0, "sampling_params": {"max_tokens": 3}}, "unknown sampling params ['max_tokens']"),
    ({**FILL, "id": -1}, "non-negative integer 'id'"),
])
def test_value_rules_still_hold_on_typed_nodes(node, needle):
    with pytest.raises(ValueError, match="invalid program graph") as info:
        validate_graph(_graph(node))
    assert needle in str(info.value)


def test_a_graph_built_from_structs_validates_like_its_json():
    g = ProgramGraph([Stream(0, nodes=[Fill(id=0, text="a"), Fork(id=1, n=1, children=[1]),
                                       Join(id=3, fork=1, children=[1])]),
                      Stream(1, parent=0, fork=1, index=0, nodes=[Gen(id=2, name="x")])], "built")
    again = validate_graph(copy.deepcopy(g.to_dict()))
    assert again == g and again.edges() == g.edges()
    assert [op_of(n) for _, n in again.iter_nodes()] == ["fill", "fork", "gen", "join"]
