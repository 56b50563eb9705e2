"""Program expression nodes (the IR shared by the interpreter, a tracer and a compiler).

Nodes are plain dataclasses: they carry data only, never behaviour that needs
a backend, so the same objects can be interpreted on a thread, recorded by a
tracer, or serialized (``to_dict``) into a request graph.
"""
from __future__ import annotations

import base64
import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from sglite.lang.function import SglFunction
from sglite.protocol.sampling import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR, SglSamplingParams

# SGLang's module path for these names (``from sglang.lang.ir import REGEX_INT, SglFunction``).
__all__ = [
    "REGEX_BOOL", "REGEX_FLOAT", "REGEX_INT", "REGEX_STR", "SglArgument", "SglCommitLazy",
    "SglConstantText", "SglExpr", "SglExprList", "SglFork", "SglFunction", "SglGen", "SglGetForkItem",
    "SglImage", "SglRoleBegin", "SglRoleEnd", "SglSamplingParams", "SglSelect", "SglSeparateReasoning",
    "SglVarScopeBegin", "SglVarScopeEnd", "SglVariable",
]

_node_ids = itertools.count()


def _to_jsonable(value: Any) -> Any:
    if isinstance(value, SglExpr):
        return value.to_dict()
    if isinstance(value, SglSamplingParams):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, bytes):
        return {"bytes": len(value)}
    # Callables such as choice methods serialize by name.
    return getattr(value, "name", None) or getattr(value, "__name__", None) or repr(value)


@dataclass(eq=False)
class SglExpr:
    """Base node. ``a + b`` (with str or expr on either side) builds a flat SglExprList."""

    node_id: int = field(default_factory=lambda: next(_node_ids), init=False, repr=False)

    def __add__(self, other: Any) -> "SglExprList":
        return SglExprList(_flatten([self, other]))

    def __radd__(self, other: Any) -> "SglExprList":
        return SglExprList(_flatten([other, self]))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form: ``{"type": <class name>, <field>: ...}``."""
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in dataclasses.fields(self):
            out[f.name] = _to_jsonable(getattr(self, f.name))
        return out


def _coerce(x: Any) -> SglExpr:
    if isinstance(x, SglExpr):
        return x
    if isinstance(x, str):
        return SglConstantText(x)
    raise TypeError(f"cannot append {type(x).__name__} to a program; use str or an sglite expression")


def _flatten(items: list[Any]) -> list[SglExpr]:
    out: list[SglExpr] = []
    for item in items:
        expr = _coerce(item)
        if isinstance(expr, SglExprList):
            out.extend(expr.exprs)
        else:
            out.append(expr)
    return out


@dataclass(eq=False)
class SglConstantText(SglExpr):
    """Literal text appended to the state."""

    value: str = ""


@dataclass(eq=False)
class SglExprList(SglExpr):
    """A sequence of expressions executed in order."""

    exprs: list[SglExpr] = field(default_factory=list)


@dataclass(eq=False)
class SglGen(SglExpr):
    """Generate text into variable ``name`` (``n > 1`` stores a list)."""

    name: Optional[str] = None
    sampling_params: SglSamplingParams = field(default_factory=SglSamplingParams)


@dataclass(eq=False)
class SglSelect(SglExpr):
    """Pick one of ``choices`` by scoring each choice's own tokens."""

    name: Optional[str] = None
    choices: list[str] = field(default_factory=list)
    temperature: float = 0.0
    choices_method: Optional[Callable[..., Any]] = None


@dataclass(eq=False)
class SglRoleBegin(SglExpr):
    role: str = "user"


@dataclass(eq=False)
class SglRoleEnd(SglExpr):
    role: str = "user"


@dataclass(eq=False)
class SglImage(SglExpr):
    """An image: a file path, raw bytes, a base64 string or a PIL image."""

    source: Any = None

    def to_base64(self) -> str:
        src = self.source
        if isinstance(src, bytes):
            return base64.b64encode(src).decode()
        if isinstance(src, str):
            if src.startswith("data:"):
                return src.split(",", 1)[1]
            try:
                with open(src, "rb") as fh:
                    return base64.b64encode(fh.read()).decode()
            except OSError:
                return src  # assume it is already base64
        save = getattr(src, "save", None)  # PIL.Image without importing PIL
        if callable(save):
            import io

            buf = io.BytesIO()
            save(buf, format="PNG")
            return base64.b64encode(buf.getvalue()).decode()
        raise TypeError(f"unsupported image source {type(src).__name__}")


@dataclass(eq=False)
class SglVarScopeBegin(SglExpr):
    name: str = ""


@dataclass(eq=False)
class SglVarScopeEnd(SglExpr):
    name: str = ""


@dataclass(eq=False)
class SglCommitLazy(SglExpr):
    """Prefill the current text (``max_new_tokens=0``) so forks share its KV cache."""


@dataclass(eq=False)
class SglFork(SglExpr):
    """Tracing node: the state splits into ``n`` branches."""

    n: int = 1


@dataclass(eq=False)
class SglGetForkItem(SglExpr):
    """Tracing node: the start of branch ``index`` of a fork."""

    index: int = 0
    fork: Optional[SglFork] = None


@dataclass(eq=False)
class SglVariable(SglExpr):
    """A reference to a variable produced by ``source`` (used by tracing)."""

    name: str = ""
    source: Optional[SglExpr] = None


@dataclass(eq=False)
class SglArgument(SglExpr):
    """A function argument; a placeholder (``value=None``) while tracing."""

    name: str = ""
    value: Any = None

    def __format__(self, spec: str) -> str:
        # An f-string on a traced argument would silently bake in a fake value.
        raise TypeError(f"cannot format the traced argument {self.name!r} as a string")

    def __str__(self) -> str:
        raise TypeError(f"cannot convert the traced argument {self.name!r} to str")


@dataclass(eq=False)
class SglSeparateReasoning(SglExpr):
    """After ``expr`` ran: split each of its gens' ``<think>...</think>`` part into
    ``<name>_reasoning_content`` and keep only the answer in ``<name>`` and in the text."""

    model_type: Optional[str] = None
    expr: Optional[SglExpr] = None
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.names:
            names = [n.name for n in _walk_exprs(self.expr) if isinstance(n, (SglGen, SglSelect))]
            if any(not n for n in names):
                raise ValueError("separate_reasoning needs named gens (name must be provided)")
            self.names = [n for n in names if n]

    @staticmethod
    def process_name_for_reasoning(name: Optional[str]) -> str:
        if not name:
            raise ValueError("name must be provided")
        return f"{name}_reasoning_content"

    @property
    def name(self) -> Optional[str]:
        """The reasoning variable of the (first) gen, as in SGLang."""
        return self.process_name_for_reasoning(self.names[0]) if self.names else None


def _walk_exprs(expr: Optional[SglExpr]):
    if isinstance(expr, SglExprList):
        for e in expr.exprs:
            yield from _walk_exprs(e)
    elif expr is not None:
        yield expr
