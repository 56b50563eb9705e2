"""Request graphs: the JSON form of a compiled program (``"version": 1``).

A graph is a list of *streams*. Stream 0 is the program's state ``s``; every
other stream is one branch of a ``fork`` node in its parent stream. Each stream
is a list of nodes executed in order; node ids are global and follow the trace
order, which is a topological order of all dependencies:

* stream order (a node waits for the previous node of its stream);
* fork edges (a branch starts when its parent reaches the fork node);
* join edges (a join waits for every node of the joined branches);
* dataflow edges (a ``var_ref`` appends a variable produced by node ``source``).

Because every dependency points to a smaller id, a validated graph cannot
deadlock. Node shapes (all carry ``"op"`` and ``"id"``)::

    fill       {"text"}
    gen        {"name", "sampling_params": {<SglSamplingParams fields that override run()>}}
    select     {"name", "choices", "temperature", "method"}
    role_begin {"role"}            role_end  {"role"}
    var_begin  {"name"}            var_end   {"name"}
    fork       {"n", "children": [stream ids]}
    join       {"fork": fork node id, "children": [stream ids], "mode"}
    var_ref    {"source": node id, "name", "index": int | null}
    set_var    {"name", "value": <JSON>}
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

from sglite.protocol.sampling import SglSamplingParams

GRAPH_VERSION = 1

# Limits keep a hostile or runaway graph from tying up the server.
MAX_NODES = 10_000
MAX_STREAMS = 1_024
MAX_TEXT_CHARS = 2_000_000
MAX_NAME_CHARS = 256
MAX_CHOICES = 1_024
MAX_FORK = 256

OPS = ("fill", "gen", "select", "role_begin", "role_end", "var_begin", "var_end", "fork", "join",
       "var_ref", "set_var")
ROLES = ("system", "user", "assistant")
JOIN_MODES = ("gather_variable", "concate_and_append")
CHOICE_METHODS = ("token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized")
SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SglSamplingParams))
# Nodes that publish a variable (var_begin's variable appears at var_end).
PRODUCERS = ("gen", "select", "var_end", "set_var")
# Nodes that send a request to the model.
REQUESTS = ("gen", "select")


@dataclass
class Stream:
    """One program stream: the root state (id 0) or one branch of a fork."""

    id: int
    parent: Optional[int] = None
    fork: Optional[int] = None  # id of the fork node in the parent stream
    index: int = 0  # branch index within that fork
    nodes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class ProgramGraph:
    """A traced program: streams of nodes plus the edges implied by them."""

    streams: list[Stream] = field(default_factory=list)
    name: str = "program"
    # Client-side only (never serialized): what the traced function returned, and for
    # each root variable the id of the node whose value is final (join ids included).
    ret_value: Any = field(default=None, repr=False, compare=False)
    root_sources: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    # -- construction -------------------------------------------------------
    def node(self, node_id: int) -> dict[str, Any]:
        return self._index()[node_id][1]

    def stream_of(self, node_id: int) -> int:
        return self._index()[node_id][0]

    def _index(self) -> dict[int, tuple[int, dict[str, Any]]]:
        return {n["id"]: (s.id, n) for s in self.streams for n in s.nodes}

    def iter_nodes(self) -> Iterator[tuple[int, dict[str, Any]]]:
        """``(stream id, node)`` for every node, in id (trace) order."""
        pairs = [(s.id, n) for s in self.streams for n in s.nodes]
        return iter(sorted(pairs, key=lambda p: p[1]["id"]))

    @property
    def num_nodes(self) -> int:
        return sum(len(s.nodes) for s in self.streams)

    def edges(self) -> list[tuple[int, int, str]]:
        """``(from node, to node, kind)`` with kind in stream/fork/join/data."""
        out: list[tuple[int, int, str]] = []
        first = {s.id: s.nodes[0]["id"] for s in self.streams if s.nodes}
        last = {s.id: s.nodes[-1]["id"] for s in self.streams if s.nodes}
        for s in self.streams:
            for a, b in zip(s.nodes, s.nodes[1:]):
                out.append((a["id"], b["id"], "stream"))
            for n in s.nodes:
                if n["op"] == "fork":
                    out += [(n["id"], first[c], "fork") for c in n["children"] if c in first]
                elif n["op"] == "join":
                    out += [(last[c], n["id"], "join") for c in n["children"] if c in last]
                elif n["op"] == "var_ref":
                    out.append((n["source"], n["id"], "data"))
        return out

    # -- JSON ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": GRAPH_VERSION,
            "name": self.name,
            "streams": [
                {"id": s.id, "parent": s.parent, "fork": s.fork, "index": s.index, "nodes": s.nodes}
                for s in self.streams
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, data: Any) -> "ProgramGraph":
        """Parse a JSON string or dict, validating it (``ValueError`` if malformed)."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError as e:
                raise ValueError(f"the graph is not valid JSON: {e}") from None
        return validate_graph(data)


# -- validation ---------------------------------------------------------------
def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"invalid program graph: {msg}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_name(n: dict[str, Any], required: bool) -> None:
    name = n.get("name")
    if name is None and not required:
        return
    _need(isinstance(name, str) and 0 < len(name) <= MAX_NAME_CHARS,
          f"node {n.get('id')}: 'name' must be a string of 1..{MAX_NAME_CHARS} characters")


def _check_sampling(d: Any, where: str) -> None:
    _need(isinstance(d, dict), f"{where}: sampling_params must be an object")
    unknown = set(d) - SAMPLING_FIELDS
    _need(not unknown, f"{where}: unknown sampling params {sorted(unknown)}")


def validate_sampling_defaults(d: Any) -> SglSamplingParams:
    """Program-wide defaults as sent by ``run()``; unknown keys are rejected."""
    if d is None:
        return SglSamplingParams()
    _check_sampling(d, "defaults")
    return SglSamplingParams(**d)


def _check_node(n: Any, text_budget: list[int]) -> None:
    _need(isinstance(n, dict), "a node must be an object")
    _need(_is_int(n.get("id")) and n["id"] >= 0, "every node needs a non-negative integer 'id'")
    op = n.get("op")
    _need(op in OPS, f"node {n['id']}: unknown op {op!r}")
    nid = n["id"]
    if op == "fill":
        _need(isinstance(n.get("text"), str), f"node {nid}: fill needs 'text'")
        text_budget[0] -= len(n["text"])
    elif op == "gen":
        _check_name(n, required=False)
        _check_sampling(n.get("sampling_params", {}), f"node {nid}")
    elif op == "select":
        _check_name(n, required=False)
        ch = n.get("choices")
        _need(isinstance(ch, list) and 0 < len(ch) <= MAX_CHOICES
              and all(isinstance(c, str) and c for c in ch),
              f"node {nid}: select needs 1..{MAX_CHOICES} non-empty string choices")
        text_budget[0] -= sum(len(c) for c in ch)
        _need(n.get("method", CHOICE_METHODS[0]) in CHOICE_METHODS, f"node {nid}: unknown choices method")
        _need(isinstance(n.get("temperature", 0.0), (int, float)), f"node {nid}: 'temperature' must be a number")
    elif op in ("role_begin", "role_end"):
        _need(n.get("role") in ROLES, f"node {nid}: role must be one of {ROLES}")
    elif op in ("var_begin", "var_end", "set_var"):
        _check_name(n, required=True)
        if op == "set_var":
            text_budget[0] -= len(json.dumps(n.get("value")))
    elif op == "fork":
        _need(_is_int(n.get("n")) and 1 <= n["n"] <= MAX_FORK, f"node {nid}: fork 'n' must be 1..{MAX_FORK}")
        ch = n.get("children")
        _need(isinstance(ch, list) and len(ch) == n["n"] and all(_is_int(c) for c in ch),
              f"node {nid}: fork needs n child stream ids")
    elif op == "join":
        _need(_is_int(n.get("fork")), f"node {nid}: join needs the 'fork' node id")
        _need(isinstance(n.get("children"), list) and all(_is_int(c) for c in n["children"]),
              f"node {nid}: join needs child stream ids")
        _need(n.get("mode", JOIN_MODES[0]) in JOIN_MODES, f"node {nid}: unknown join mode")
    elif op == "var_ref":
        _need(_is_int(n.get("source")), f"node {nid}: var_ref needs a 'source' node id")
        _check_name(n, required=True)
        _need(n.get("index") is None or _is_int(n["index"]), f"node {nid}: 'index' must be an integer")


def validate_graph(d: Any) -> ProgramGraph:
    """Check a graph dict (shape, limits, references, acyclicity); return a ProgramGraph.

    Raises ``ValueError`` with a readable message on any problem, so a server
    can answer 400 before running anything.
    """
    _need(isinstance(d, dict), "the graph must be a JSON object")
    _need(d.get("version") == GRAPH_VERSION, f"unsupported version {d.get('version')!r} (expected {GRAPH_VERSION})")
    raw = d.get("streams")
    _need(isinstance(raw, list) and 0 < len(raw) <= MAX_STREAMS, f"'streams' must hold 1..{MAX_STREAMS} streams")
    streams: list[Stream] = []
    total_nodes = 0
    budget = [MAX_TEXT_CHARS]
    for i, s in enumerate(raw):
        _need(isinstance(s, dict), "a stream must be an object")
        _need(s.get("id") == i, f"stream ids must be 0..{len(raw) - 1} in order")
        nodes = s.get("nodes")
        _need(isinstance(nodes, list), f"stream {i}: 'nodes' must be a list")
        total_nodes += len(nodes)
        _need(total_nodes <= MAX_NODES, f"more than {MAX_NODES} nodes")
        for n in nodes:
            _check_node(n, budget)
        _need(budget[0] >= 0, f"more than {MAX_TEXT_CHARS} characters of text")
        parent, fork = s.get("parent"), s.get("fork")
        if i == 0:
            _need(parent is None and fork is None, "stream 0 is the root and has no parent")
        else:
            _need(_is_int(parent) and 0 <= parent < len(raw) and _is_int(fork),
                  f"stream {i}: needs its 'parent' stream and 'fork' node")
        streams.append(Stream(i, parent, fork, int(s.get("index") or 0), [dict(n) for n in nodes]))
    graph = ProgramGraph(streams, str(d.get("name") or "program")[:MAX_NAME_CHARS])
    _check_references(graph)
    return graph


def _check_references(g: ProgramGraph) -> None:
    where: dict[int, int] = {}
    for s in g.streams:
        prev = -1
        for n in s.nodes:
            _need(n["id"] not in where, f"duplicate node id {n['id']}")
            _need(n["id"] > prev, f"stream {s.id}: node ids must increase")
            where[n["id"]] = s.id
            prev = n["id"]
    forked: dict[int, tuple[int, int, int]] = {}  # child stream -> (parent stream, fork id, index)
    joined: set[int] = set()
    for s in g.streams:
        for n in s.nodes:
            if n["op"] == "fork":
                for k, c in enumerate(n["children"]):
                    _need(0 < c < len(g.streams) and c not in forked, f"node {n['id']}: bad or reused child {c}")
                    forked[c] = (s.id, n["id"], k)
            elif n["op"] == "var_ref":
                _need(n["source"] in where and n["source"] < n["id"],
                      f"node {n['id']}: var_ref source {n['source']} must be an earlier node")
                src = g.node(n["source"])
                _need(src["op"] in PRODUCERS + ("join",), f"node {n['id']}: source {n['source']} produces no variable")
    for s in g.streams[1:]:
        _need(forked.get(s.id) == (s.parent, s.fork, s.index), f"stream {s.id} is not a child of its fork node")
        if s.nodes:
            _need(s.nodes[0]["id"] > s.fork, f"stream {s.id} starts before its fork")
    for s in g.streams:
        for n in s.nodes:
            if n["op"] != "join":
                continue
            fork_id = n["fork"]
            _need(fork_id in where and where[fork_id] == s.id and g.node(fork_id)["op"] == "fork",
                  f"node {n['id']}: join must name a fork of its own stream")
            _need(n["children"] == g.node(fork_id)["children"], f"node {n['id']}: join children differ from its fork")
            for c in n["children"]:
                _need(c not in joined, f"stream {c} is joined twice")
                joined.add(c)
                child = g.streams[c]
                _need(not child.nodes or child.nodes[-1]["id"] < n["id"],
                      f"node {n['id']}: joined stream {c} has nodes after the join")
