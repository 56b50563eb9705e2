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
deadlock. Nodes are typed structs (:mod:`sglite.protocol.graph_nodes`); on the
wire each is an object with ``"op"`` (its tag) and ``"id"``::

    fill       {"text"}
    gen        {"name", "sampling_params": {<SglSamplingParams fields that override run()>}}
    select     {"name", "choices", "temperature", "method"}
    role_begin {"role"}            role_end  {"role"}
    var_begin  {"name"}            var_end   {"name"}
    fork       {"n", "children": [stream ids]}
    join       {"fork": fork node id, "children": [stream ids], "mode"}
    var_ref    {"source": node id, "name", "index": int | null}
    set_var    {"name", "value": <JSON>}

The whole document is :class:`GraphWire` (``version``, ``name``, ``streams``). A
reader checks ``version`` first, so a future version may change any shape below it.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional

import msgspec

from sglite.protocol.graph_nodes import (
    PRODUCERS, REQUESTS, TEXTLESS, Fill, Fork, Gen, Int, Join, Node, RoleBegin, RoleEnd, Select, SetVar, VarBegin,
    VarEnd, VarRef, op_of,
)
from sglite.protocol.sampling import SglSamplingParams

__all__ = [
    "GRAPH_VERSION", "GraphWire", "Node", "PRODUCERS", "ProgramGraph", "REQUESTS", "Stream", "TEXTLESS",
    "decode_nodes", "op_of", "validate_graph", "validate_sampling_defaults",
]

GRAPH_VERSION = 1

# Limits keep a hostile or runaway graph from tying up the server.
MAX_NODES = 10_000
MAX_STREAMS = 1_024
MAX_TEXT_CHARS = 2_000_000
MAX_NAME_CHARS = 256
MAX_CHOICES = 1_024
MAX_FORK = 256

ROLES = ("system", "user", "assistant")
JOIN_MODES = ("gather_variable", "concate_and_append")
CHOICE_METHODS = ("token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized")
SAMPLING_FIELDS = frozenset(f.name for f in dataclasses.fields(SglSamplingParams))


class Stream(msgspec.Struct, forbid_unknown_fields=True):
    """One program stream: the root state (id 0) or one branch of a fork."""

    id: Int
    parent: Optional[Int] = None
    fork: Optional[Int] = None  # id of the fork node in the parent stream
    index: Int = 0  # branch index within that fork
    nodes: list[Node] = []


class GraphWire(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The JSON document: what ``to_dict()`` writes and ``validate_graph`` reads."""

    version: Int
    name: Optional[str] = "program"
    streams: list[Stream]


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
    def node(self, node_id: int) -> Node:
        return self._index()[node_id][1]

    def stream_of(self, node_id: int) -> int:
        return self._index()[node_id][0]

    def _index(self) -> dict[int, tuple[int, Node]]:
        return {n.id: (s.id, n) for s in self.streams for n in s.nodes}

    def iter_nodes(self) -> Iterator[tuple[int, Node]]:
        """``(stream id, node)`` for every node, in id (trace) order."""
        pairs = [(s.id, n) for s in self.streams for n in s.nodes]
        return iter(sorted(pairs, key=lambda p: p[1].id))

    @property
    def num_nodes(self) -> int:
        return sum(len(s.nodes) for s in self.streams)

    def edges(self) -> list[tuple[int, int, str]]:
        """``(from node, to node, kind)`` with kind in stream/fork/join/data."""
        out: list[tuple[int, int, str]] = []
        first = {s.id: s.nodes[0].id for s in self.streams if s.nodes}
        last = {s.id: s.nodes[-1].id for s in self.streams if s.nodes}
        for s in self.streams:
            for a, b in zip(s.nodes, s.nodes[1:]):
                out.append((a.id, b.id, "stream"))
            for n in s.nodes:
                if isinstance(n, Fork):
                    out += [(n.id, first[c], "fork") for c in n.children if c in first]
                elif isinstance(n, Join):
                    out += [(last[c], n.id, "join") for c in n.children if c in last]
                elif isinstance(n, VarRef):
                    out.append((n.source, n.id, "data"))
        return out

    # -- JSON ---------------------------------------------------------------
    def to_wire(self) -> GraphWire:
        return GraphWire(version=GRAPH_VERSION, name=self.name, streams=self.streams)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict (every field, defaults included; node ``op`` first)."""
        out: dict[str, Any] = msgspec.to_builtins(self.to_wire())
        return out

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


def decode_nodes(nodes: Any) -> list[Node]:
    """Typed nodes from their wire dicts (a client reading a graph it built; no semantic checks)."""
    try:
        return msgspec.convert(nodes, list[Node], strict=True)
    except msgspec.ValidationError as e:
        raise ValueError(f"invalid program graph: {_explain(e)}") from None


# -- validation ---------------------------------------------------------------
def _need(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(f"invalid program graph: {msg}")


_BAD_TAG = re.compile(r"Invalid value (.*) - at `(.*)\.op`$")


def _explain(e: msgspec.ValidationError) -> str:
    """msgspec's message (it names the path, e.g. ``$.streams[0].nodes[3].id``), an unknown
    tag worded as the op it is."""
    m = _BAD_TAG.match(str(e))
    return f"unknown op {m.group(1)} at `{m.group(2)}`" if m else str(e)


def _check_name(nid: int, name: Optional[str], required: bool) -> None:
    if name is None and not required:
        return
    _need(name is not None and 0 < len(name) <= MAX_NAME_CHARS,
          f"node {nid}: 'name' must be a string of 1..{MAX_NAME_CHARS} characters")


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


def _check_node(n: Node) -> int:
    """The value rules of one decoded node; returns how many characters of text it carries."""
    _need(n.id >= 0, "every node needs a non-negative integer 'id'")
    nid = n.id
    match n:
        case Fill():
            return len(n.text)
        case Gen():
            _check_name(nid, n.name, required=False)
            _check_sampling(n.sampling_params, f"node {nid}")
        case Select():
            _check_name(nid, n.name, required=False)
            _need(0 < len(n.choices) <= MAX_CHOICES and all(n.choices),
                  f"node {nid}: select needs 1..{MAX_CHOICES} non-empty string choices")
            _need(n.method in CHOICE_METHODS, f"node {nid}: unknown choices method")
            return sum(len(c) for c in n.choices)
        case RoleBegin() | RoleEnd():
            _need(n.role in ROLES, f"node {nid}: role must be one of {ROLES}")
        case VarBegin() | VarEnd():
            _check_name(nid, n.name, required=True)
        case SetVar():
            _check_name(nid, n.name, required=True)
            return len(json.dumps(n.value))
        case Fork():
            _need(1 <= n.n <= MAX_FORK, f"node {nid}: fork 'n' must be 1..{MAX_FORK}")
            _need(len(n.children) == n.n, f"node {nid}: fork needs n child stream ids")
        case Join():
            _need(n.mode in JOIN_MODES, f"node {nid}: unknown join mode")
        case VarRef():
            _check_name(nid, n.name, required=True)
    return 0


def _precheck(d: Any) -> None:
    """Version and size, before decoding: a newer version may have another shape, and a
    huge graph is refused without building it."""
    _need(isinstance(d, dict), "the graph must be a JSON object")
    _need(d.get("version") == GRAPH_VERSION, f"unsupported version {d.get('version')!r} (expected {GRAPH_VERSION})")
    raw = d.get("streams")
    _need(isinstance(raw, list) and 0 < len(raw) <= MAX_STREAMS, f"'streams' must hold 1..{MAX_STREAMS} streams")
    total = sum(len(s["nodes"]) for s in raw if isinstance(s, dict) and isinstance(s.get("nodes"), list))
    _need(total <= MAX_NODES, f"more than {MAX_NODES} nodes")


def validate_graph(d: Any) -> ProgramGraph:
    """Check a graph dict (shape, limits, references, acyclicity); return a ProgramGraph.

    The shape is msgspec's strict decode into :class:`GraphWire`; the rest is checked on
    the typed nodes. Raises ``ValueError`` with a readable message on any problem, so a
    server can answer 400 before running anything.
    """
    _precheck(d)
    try:
        wire = msgspec.convert(d, GraphWire, strict=True)
    except msgspec.ValidationError as e:
        raise ValueError(f"invalid program graph: {_explain(e)}") from None
    budget = MAX_TEXT_CHARS
    for i, s in enumerate(wire.streams):
        _need(s.id == i, f"stream ids must be 0..{len(wire.streams) - 1} in order")
        for n in s.nodes:
            budget -= _check_node(n)
        _need(budget >= 0, f"more than {MAX_TEXT_CHARS} characters of text")
        if i == 0:
            _need(s.parent is None and s.fork is None, "stream 0 is the root and has no parent")
        else:
            _need(s.parent is not None and 0 <= s.parent < len(wire.streams) and s.fork is not None,
                  f"stream {i}: needs its 'parent' stream and 'fork' node")
    graph = ProgramGraph(wire.streams, (wire.name or "program")[:MAX_NAME_CHARS])
    _check_references(graph)
    return graph


def _check_references(g: ProgramGraph) -> None:
    where: dict[int, tuple[int, Node]] = {}
    for s in g.streams:
        prev = -1
        for n in s.nodes:
            _need(n.id not in where, f"duplicate node id {n.id}")
            _need(n.id > prev, f"stream {s.id}: node ids must increase")
            where[n.id] = (s.id, n)
            prev = n.id
    forked: dict[int, tuple[int, int, int]] = {}  # child stream -> (parent stream, fork id, index)
    joined: set[int] = set()
    for s in g.streams:
        for n in s.nodes:
            if isinstance(n, Fork):
                for k, c in enumerate(n.children):
                    _need(0 < c < len(g.streams) and c not in forked, f"node {n.id}: bad or reused child {c}")
                    forked[c] = (s.id, n.id, k)
            elif isinstance(n, VarRef):
                _need(n.source in where and n.source < n.id,
                      f"node {n.id}: var_ref source {n.source} must be an earlier node")
                _need(isinstance(where[n.source][1], PRODUCERS + (Join,)),
                      f"node {n.id}: source {n.source} produces no variable")
    for s in g.streams[1:]:
        _need(forked.get(s.id) == (s.parent, s.fork, s.index), f"stream {s.id} is not a child of its fork node")
        if s.nodes:
            assert s.fork is not None  # validate_graph checked every branch names its fork
            _need(s.nodes[0].id > s.fork, f"stream {s.id} starts before its fork")
    for s in g.streams:
        for n in s.nodes:
            if not isinstance(n, Join):
                continue
            fork_sid, fork = where.get(n.fork, (-1, None))
            _need(fork_sid == s.id and isinstance(fork, Fork), f"node {n.id}: join must name a fork of its own stream")
            assert isinstance(fork, Fork)
            _need(n.children == fork.children, f"node {n.id}: join children differ from its fork")
            for c in n.children:
                _need(c not in joined, f"stream {c} is joined twice")
                joined.add(c)
                child = g.streams[c]
                _need(not child.nodes or child.nodes[-1].id < n.id,
                      f"node {n.id}: joined stream {c} has nodes after the join")
