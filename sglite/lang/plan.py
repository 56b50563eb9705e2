"""A readable execution plan for a ProgramGraph (what ``CompiledProgram.plan()`` prints).

The plan lists the static prefix that can be pre-cached, every stream with its
nodes (SSA-like ``%id``), the cross-stream dependencies, and the *waves*: model
requests whose inputs are ready after the same number of sequential requests,
which the runtime therefore sends together.
"""
from __future__ import annotations

from typing import Any, Sequence

from sglite.protocol.graph import REQUESTS, TEXTLESS, ProgramGraph
from sglite.protocol.graph_nodes import (
    Fill, Fork, Gen, Join, Node, RoleBegin, RoleEnd, Select, SetVar, VarBegin, VarEnd, VarRef, op_of,
)
from sglite.protocol.stream_state import static_prefix as protocol_static_prefix

_SHOWN_PARAMS = ("max_new_tokens", "temperature", "stop", "n", "regex", "json_schema", "dtype", "seed")


def _short(text: str, limit: int = 48) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _describe(n: Node) -> str:
    match n:
        case Fill():
            return f"fill {_short(n.text)}"
        case Gen():
            sp = n.sampling_params
            shown = ", ".join(f"{k}={sp[k]!r}" for k in _SHOWN_PARAMS if k in sp)
            return f"gen {n.name or '<unnamed>'}" + (f" [{shown}]" if shown else "")
        case Select():
            return f"select {n.name or '<unnamed>'} from {len(n.choices)} choices ({n.method})"
        case RoleBegin() | RoleEnd():
            return f"{op_of(n)} {n.role}"
        case VarBegin() | VarEnd():
            return f"{op_of(n)} {n.name}"
        case Fork():
            return f"fork {n.n} -> streams {n.children}" + (" (commit prefix first)" if n.n > 1 else "")
        case Join():
            return f"join %{n.fork} streams {n.children} ({n.mode})"
        case VarRef():
            idx = "" if n.index is None else f"[{n.index}]"
            return f"append {n.name}{idx} from %{n.source}"
        case SetVar():
            return f"set {n.name}"
    return op_of(n)


def _is_request(n: Node) -> bool:
    """A model call: a gen or select, or a fork that pre-caches its prefix for several branches."""
    return isinstance(n, REQUESTS) or (isinstance(n, Fork) and n.n > 1)


def _request_label(n: Node) -> str:
    return f"{op_of(n)} {n.name or ''}".rstrip() if isinstance(n, REQUESTS) else op_of(n)


def request_waves(graph: ProgramGraph) -> dict[int, list[int]]:
    """Wave number -> request node ids: a node's wave counts the requests it must wait for."""
    level_out: dict[int, int] = {}
    waves: dict[int, list[int]] = {}
    last_of = {s.id: s.nodes[-1].id for s in graph.streams if s.nodes}
    prev_in_stream: dict[int, int] = {}
    for s in graph.streams:
        for a, b in zip(s.nodes, s.nodes[1:]):
            prev_in_stream[b.id] = a.id
    # Every stream after the first is a fork (its ``fork`` node id is set).
    fork_of_first: dict[int, int] = {s.nodes[0].id: s.fork for s in graph.streams[1:]
                                     if s.nodes and s.fork is not None}
    for _, n in graph.iter_nodes():
        deps = []
        if n.id in prev_in_stream:
            deps.append(prev_in_stream[n.id])
        if n.id in fork_of_first:
            deps.append(fork_of_first[n.id])
        if isinstance(n, VarRef):
            deps.append(n.source)
        if isinstance(n, Join):
            deps += [last_of[c] for c in n.children if c in last_of]
        level = max((level_out.get(d, 0) for d in deps), default=0)
        is_request = _is_request(n)
        if is_request:
            waves.setdefault(level, []).append(n.id)
        level_out[n.id] = level + (1 if is_request else 0)
    return dict(sorted(waves.items()))


def static_prefix(graph: ProgramGraph) -> str:
    """The root's leading constant part, roles shown as ``<role>``/``</role>``."""
    out = []
    for n in graph.streams[0].nodes:
        if isinstance(n, Fill):
            out.append(n.text)
        elif isinstance(n, RoleBegin):
            out.append(f"<{n.role}>")
        elif isinstance(n, RoleEnd):
            out.append(f"</{n.role}>")
        elif not isinstance(n, TEXTLESS):
            break
    return "".join(out)


def rendered_static_prefix(root_nodes: Sequence[Node], chat_template: Any) -> str:
    """The root stream's leading constant text as the runtime will see it (roles rendered
    with ``chat_template``): what to pre-cache, and what a cache-aware router places by.
    The runtime's own definition (``protocol.stream_state.static_prefix``), so both agree."""
    return protocol_static_prefix(root_nodes, chat_template)


def format_plan(graph: ProgramGraph) -> str:
    """The plan as text (see the module docstring)."""
    n_requests = sum(1 for _, n in graph.iter_nodes() if isinstance(n, REQUESTS))
    waves = request_waves(graph)
    lines = [f"program {graph.name}: {len(graph.streams)} stream(s), {graph.num_nodes} nodes, "
             f"{n_requests} model request(s) in {len(waves)} wave(s), 1 round trip"]
    prefix = static_prefix(graph)
    lines.append(f"static prefix ({len(prefix)} chars, pre-cached when shared by a batch or before a fork): "
                 f"{_short(prefix, 72)}")
    for s in graph.streams:
        head = "root" if s.parent is None else f"branch {s.index} of fork %{s.fork} in stream {s.parent}"
        lines.append(f"stream {s.id} ({head}):")
        lines += [f"  %{n.id} = {_describe(n)}" for n in s.nodes]
    stream_of = {n.id: s.id for s in graph.streams for n in s.nodes}  # one index, not one per lookup
    node_of = {n.id: n for s in graph.streams for n in s.nodes}
    deps = []
    for sid, n in graph.iter_nodes():
        if isinstance(n, VarRef) and stream_of[n.source] != sid:
            deps.append(f"  %{n.id} (stream {sid}) reads {n.name} from %{n.source} "
                        f"(stream {stream_of[n.source]})")
        elif isinstance(n, Join):
            deps.append(f"  %{n.id} (stream {sid}) waits for streams {n.children}")
    lines.append("dependencies:" if deps else "dependencies: none across streams")
    lines += deps
    lines.append("requests sent together:")
    for level, ids in waves.items():
        items = ", ".join(f"%{i} {_request_label(node_of[i])} (s{stream_of[i]})" for i in ids)
        lines.append(f"  wave {level + 1}: {items}")
    return "\n".join(lines)
