"""Typed nodes of a request graph: one ``msgspec.Struct`` per op.

Each node type is tagged by its ``"op"`` (``tag_field``), so a list of nodes decodes
straight from JSON into the right classes, and an unknown op, an unknown field, a
missing field or a wrongly typed value (``True`` for an int, ``"5"`` for an int) fails
the decode (:func:`sglite.protocol.graph.validate_graph` uses strict conversion).
Value rules that types cannot say (limits, roles, references) are checked there too.

Encoding a node (``msgspec.to_builtins``) gives the wire dict: ``op`` first, then
``id``, then the fields below in order, defaults included, exactly the dicts the
untyped graphs carried. Nodes are frozen: the tracer builds each one whole.
"""
from __future__ import annotations

from typing import Annotated, Any, Optional, Union

import msgspec


# Every wire integer fits in 64 bits (a JSON parser accepts any size; a graph never needs more).
Int = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
# A select scores at temperature 0 (sglite.protocol.select refuses more); NaN and negatives are malformed.
Temperature = Annotated[float, msgspec.Meta(ge=0.0)]


class NodeBase(msgspec.Struct, tag_field="op", forbid_unknown_fields=True, frozen=True, kw_only=True):
    """Fields every node has; ``id`` is global across streams and follows trace order."""

    id: Int


class Fill(NodeBase, tag="fill", frozen=True, kw_only=True):
    """Append constant text."""

    text: str


class Gen(NodeBase, tag="gen", frozen=True, kw_only=True):
    """A model generation; ``sampling_params`` holds the SglSamplingParams that override run()'s."""

    name: Optional[str] = None
    sampling_params: dict[str, Any] = {}


class Select(NodeBase, tag="select", frozen=True, kw_only=True):
    """Pick one of ``choices`` by the scoring ``method`` (sglite.protocol.select)."""

    name: Optional[str] = None
    choices: list[str]
    temperature: Temperature = 0.0
    method: str = "token_length_normalized"


class RoleBegin(NodeBase, tag="role_begin", frozen=True, kw_only=True):
    role: str


class RoleEnd(NodeBase, tag="role_end", frozen=True, kw_only=True):
    role: str


class VarBegin(NodeBase, tag="var_begin", frozen=True, kw_only=True):
    name: str


class VarEnd(NodeBase, tag="var_end", frozen=True, kw_only=True):
    """Publishes the text appended since the matching ``VarBegin`` as ``name``."""

    name: str


class Fork(NodeBase, tag="fork", frozen=True, kw_only=True):
    """Start ``n`` branches, the streams ``children``, from this stream's state."""

    n: Int
    children: list[Int]


class Join(NodeBase, tag="join", frozen=True, kw_only=True):
    """Wait for the branches of fork node ``fork`` (``children`` repeats its streams)."""

    fork: Int
    children: list[Int]
    mode: str = "gather_variable"


class VarRef(NodeBase, tag="var_ref", frozen=True, kw_only=True):
    """Append the variable ``name`` produced by node ``source`` (item ``index`` of a list)."""

    source: Int
    name: str
    index: Optional[Int] = None


class SetVar(NodeBase, tag="set_var", frozen=True, kw_only=True):
    """``s[name] = value`` with a JSON ``value``."""

    name: str
    value: Any


Node = Union[Fill, Gen, Select, RoleBegin, RoleEnd, VarBegin, VarEnd, Fork, Join, VarRef, SetVar]
NODE_TYPES: tuple[type[NodeBase], ...] = (Fill, Gen, Select, RoleBegin, RoleEnd, VarBegin, VarEnd, Fork, Join,
                                          VarRef, SetVar)
# Nodes that publish a variable (var_begin's variable appears at var_end).
PRODUCERS = (Gen, Select, VarEnd, SetVar)
# Nodes that send a request to the model.
REQUESTS = (Gen, Select)
# Nodes that change no text: a static prefix reads past them.
TEXTLESS = (VarBegin, VarEnd, SetVar)


def op_of(node: NodeBase) -> str:
    """The node's wire ``"op"`` tag (for display; dispatch on the class instead)."""
    return str(type(node).__struct_config__.tag)
