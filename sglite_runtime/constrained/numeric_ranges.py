"""Regexes for bounded JSON numbers, which outlines-core's schema translation ignores.

outlines-core turns ``{"type": "integer", "minimum": 0, "maximum": 150}`` into "any
integer", so sampled output can violate the schema.  Before translating a schema we replace
every bounded ``integer``/``number`` node by a unique string ``const`` placeholder, let
outlines build the regex, then substitute the placeholder's quoted literal with a regex for
exactly the allowed range (``rewrite_bounded_numbers`` + ``substitute_placeholders``).

Numbers with bounds are spelled without an exponent, and non-integral bounds are rounded
inward (``minimum: 0.5`` allows from 1): always sound, sometimes stricter than the schema.
"""

from __future__ import annotations

import math
from typing import Any

_PLACEHOLDER = "__SGLITE_NUM_{}__"
_BOUND_KEYS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_FRACTION = r"(\.[0-9]+)?"
_DATA_KEYS = frozenset({"const", "enum", "default", "examples"})


def _same_length(lo: str, hi: str) -> list[str]:
    """Alternatives matching digit strings of equal length between ``lo`` and ``hi``."""
    if lo == hi:
        return [lo]
    if len(lo) == 1:
        return [f"[{lo}-{hi}]"]
    rest = len(lo) - 1
    if lo[1:] == "0" * rest and hi[1:] == "9" * rest:
        return [f"[{lo[0]}-{hi[0]}][0-9]{{{rest}}}"]
    if lo[0] == hi[0]:
        return [lo[0] + p for p in _same_length(lo[1:], hi[1:])]
    parts = [lo[0] + p for p in _same_length(lo[1:], "9" * rest)]
    first, last = int(lo[0]) + 1, int(hi[0]) - 1
    if first <= last:
        parts.append(f"[{first}-{last}][0-9]{{{rest}}}")
    parts += [hi[0] + p for p in _same_length("0" * rest, hi[1:])]
    return parts


def natural_range_regex(lo: int, hi: int | None) -> str:
    """Regex for the decimal naturals ``lo <= n <= hi`` (``hi=None``: unbounded)."""
    lo = max(lo, 0)
    parts: list[str] = []
    length = len(str(lo))
    top = hi if hi is not None else 10 ** length - 1
    while lo <= top:
        end = min(top, 10 ** length - 1)
        parts += _same_length(str(lo), str(end))
        lo, length = 10 ** length, length + 1
        if hi is None:
            break
    if hi is None:
        parts.append(f"[1-9][0-9]{{{length - 1},}}")
    if not parts:
        raise ValueError(f"empty integer range [{lo}, {hi}]")
    return "(" + "|".join(parts) + ")"


def _nonneg(lo: int, hi: int | None, integer: bool) -> str:
    """Regex for non-negative values in ``[lo, hi]`` (integers, or decimals)."""
    if integer:
        return natural_range_regex(lo, hi)
    if hi is None:
        return natural_range_regex(lo, None) + _FRACTION
    below = f"{natural_range_regex(lo, hi - 1)}{_FRACTION}|" if lo <= hi - 1 else ""
    return rf"({below}{hi}(\.0+)?)"


def number_range_regex(lo: float | None, hi: float | None, integer: bool) -> str:
    """Regex for JSON numbers in ``[lo, hi]`` (None = unbounded), bounds rounded inward."""
    lo_i = math.ceil(lo) if lo is not None else None
    hi_i = math.floor(hi) if hi is not None else None
    if lo_i is not None and hi_i is not None and lo_i > hi_i:
        raise ValueError(f"empty numeric range [{lo}, {hi}]")
    parts = []
    if hi_i is None or hi_i >= 0:
        parts.append(_nonneg(max(lo_i, 0) if lo_i is not None else 0, hi_i, integer))
    if lo_i is None or lo_i < 0:
        # v in [lo, min(hi, 0)] <=> -v in [max(-hi, 0), -lo]; "-0" is numerically 0.
        near = -hi_i if hi_i is not None and hi_i < 0 else (1 if integer else 0)
        far = -lo_i if lo_i is not None else None
        parts.append("-" + _nonneg(near, far, integer))
    return "(" + "|".join(parts) + ")"


def _bounds(node: dict) -> tuple[float | None, float | None, bool]:
    integer = node.get("type") == "integer"
    lo, hi = node.get("minimum"), node.get("maximum")
    xlo, xhi = node.get("exclusiveMinimum"), node.get("exclusiveMaximum")
    step = 1 if integer else 1e-9  # exclusive float bounds: tightened, then rounded inward
    if isinstance(xlo, (int, float)) and not isinstance(xlo, bool):
        cand = (math.floor(xlo) + 1) if integer else xlo + step
        lo = cand if lo is None else max(lo, cand)
    if isinstance(xhi, (int, float)) and not isinstance(xhi, bool):
        cand = (math.ceil(xhi) - 1) if integer else xhi - step
        hi = cand if hi is None else min(hi, cand)
    return lo, hi, integer


def rewrite_bounded_numbers(schema: Any) -> tuple[Any, dict[str, str]]:
    """Copy of ``schema`` with bounded numeric nodes replaced by placeholders, and the
    placeholder -> range-regex map for ``substitute_placeholders``."""
    table: dict[str, str] = {}

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, dict):
            return node
        if node.get("type") in ("integer", "number") and any(k in node for k in _BOUND_KEYS):
            lo, hi, integer = _bounds(node)
            name = _PLACEHOLDER.format(len(table))
            table[name] = number_range_regex(lo, hi, integer)
            return {"const": name}
        # Literal data (const/enum/default/examples) is not schema: leave it alone.
        return {k: (v if k in _DATA_KEYS else walk(v)) for k, v in node.items()}

    return walk(schema), table


def substitute_placeholders(regex: str, table: dict[str, str]) -> str:
    """Put each range regex where outlines wrote its placeholder's quoted literal."""
    for name, pattern in table.items():
        regex = regex.replace(f'"{name}"', pattern)
    return regex
