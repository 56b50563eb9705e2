"""Turning request constraints into regexes, and validating them cheaply.

Everything here is pure Python plus outlines-core's schema-to-regex translation, which is
fast; the expensive step (building the token Index) lives in the backend and runs in a
worker thread.  ``validate_spec`` is meant for the HTTP layer: it rejects what is certainly
invalid (bad regex syntax, a schema that fails the JSON Schema meta-schema or that outlines
cannot translate) before the request ever reaches the scheduler.
"""

from __future__ import annotations

import json
import re
from typing import Any

from outlines_core.json_schema import build_regex_from_schema

from sglite_runtime.constrained.base import GRAMMAR_KINDS, MAX_CHOICE_CHARS, MAX_CHOICES, MAX_SPEC_CHARS
from sglite_runtime.constrained.numeric_ranges import rewrite_bounded_numbers, substitute_placeholders

#: Default JSON whitespace: at most one space between tokens.  Bounded, so a model cannot
#: loop on whitespace forever, and it matches ``json.dumps`` output.
DEFAULT_WHITESPACE = r"[ ]?"

#: Nesting depth of ``json_object`` mode: the object's values may be flat objects or arrays
#: of scalars.  Depth 2 takes ~15 s to compile (outlines-core DFA build), depth 1 ~0.4 s.
DEFAULT_JSON_OBJECT_DEPTH = 1

#: Deepest schema (dict/list nesting) accepted; deep ``$ref``/``oneOf`` chains are a
#: denial-of-service vector for the compiler.
MAX_SCHEMA_DEPTH = 48

# Python ``re`` accepts these but the Rust regex engine behind outlines-core does not.
_UNSUPPORTED_REGEX = re.compile(r"\(\?<?[=!]|\(\?P=|\\[1-9]")

_UNICODE_DIGIT = re.compile(r"(?<!\\)((?:\\\\)*)\\d")

_JSON_STRING = r'"([^"\\\x00-\x1F\x7F-\x9F]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
_JSON_NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"
_JSON_SCALAR = rf"({_JSON_STRING}|{_JSON_NUMBER}|true|false|null)"


def ascii_digits(regex: str) -> str:
    """Replace ``\\d`` (Unicode digits in Rust and Python) by ``[0-9]``.

    outlines-core's ``date`` and ``uri`` formats use ``\\d``, which lets a model write
    e.g. Javanese digits in a date.  ``[0-9]`` also works inside a class (Rust nests
    classes), and an escaped backslash before ``d`` is left alone."""
    return _UNICODE_DIGIT.sub(r"\1[0-9]", regex)


def schema_from_pydantic(model_cls: Any) -> dict[str, Any]:
    """JSON schema of a pydantic v2 model class (``model_json_schema``)."""
    return model_cls.model_json_schema()


def schema_to_str(spec: str | dict | bool) -> str:
    """Canonical string form of a schema (the cache key).  Strings pass through as is."""
    if isinstance(spec, str):
        return spec
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def escape_literal(text: str) -> str:
    """Escape ``text`` for the Rust regex syntax used by outlines-core.

    Python's ``re.escape`` writes e.g. a backslash plus a raw newline, which is legal but
    brittle; here letters, digits and non-ASCII stay literal, ASCII punctuation is
    backslash-escaped and control characters become ``\\x{..}``."""
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch.isalnum() or code > 0x7F or ch in "_ ":
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{{{code:x}}}")
        else:
            out.append("\\" + ch)
    return "".join(out)


def choices_regex(choices: list[str]) -> str:
    """A regex matching exactly one of ``choices``."""
    return "(" + "|".join(escape_literal(c) for c in choices) + ")"


def json_object_regex(depth: int = DEFAULT_JSON_OBJECT_DEPTH, whitespace: str = DEFAULT_WHITESPACE) -> str:
    """Any JSON object whose containers nest at most ``depth`` levels below the top."""
    ws = f"({whitespace})" if whitespace else ""

    def container(value: str) -> tuple[str, str]:
        member = rf"{_JSON_STRING}{ws}:{ws}{value}"
        obj = rf"\{{{ws}({member}({ws},{ws}{member})*)?{ws}\}}"
        arr = rf"\[{ws}({value}({ws},{ws}{value})*)?{ws}\]"
        return obj, arr

    value = _JSON_SCALAR
    for _ in range(depth):
        obj, arr = container(value)
        value = f"({_JSON_SCALAR}|{obj}|{arr})"
    obj, _ = container(value)
    return obj


def _nesting_depth(node: Any, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level
    if isinstance(node, dict):
        return max((_nesting_depth(v, level + 1) for v in node.values()), default=level)
    if isinstance(node, list):
        return max((_nesting_depth(v, level + 1) for v in node), default=level)
    return level


def parse_schema(spec: str | dict | bool) -> dict | bool:
    """Parse and meta-validate a JSON schema.  Raises ValueError with a readable reason."""
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    size = len(spec) if isinstance(spec, str) else len(schema_to_str(spec))
    if size > MAX_SPEC_CHARS:
        raise ValueError(f"JSON schema too long ({size} > {MAX_SPEC_CHARS} characters)")
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ValueError(f"JSON schema is not valid JSON: {exc}") from None
    if not isinstance(spec, (dict, bool)):
        raise ValueError(f"JSON schema must be an object or a boolean, got {type(spec).__name__}")
    if _nesting_depth(spec) > MAX_SCHEMA_DEPTH:
        raise ValueError(f"JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels")
    try:
        Draft202012Validator.check_schema(spec)
    except SchemaError as exc:
        raise ValueError(f"invalid JSON schema: {exc.message}") from None
    return spec


def check_choices(choices: list[str] | tuple[str, ...]) -> None:
    """Bound the count and size of ``choices`` (their alternation is compiled like a regex)."""
    if len(choices) > MAX_CHOICES:
        raise ValueError(f"too many choices ({len(choices)} > {MAX_CHOICES})")
    longest = max(len(c) for c in choices)
    if longest > MAX_CHOICE_CHARS:
        raise ValueError(f"a choice is too long ({longest} > {MAX_CHOICE_CHARS} characters)")
    total = sum(len(c) for c in choices)
    if total > MAX_SPEC_CHARS:
        raise ValueError(f"choices too long in total ({total} > {MAX_SPEC_CHARS} characters)")


def check_regex(pattern: str) -> None:
    """Reject regexes that certainly fail: bad syntax, or constructs Rust lacks."""
    if not isinstance(pattern, str):
        raise ValueError(f"regex must be a string, got {type(pattern).__name__}")
    if len(pattern) > MAX_SPEC_CHARS:
        raise ValueError(f"regex too long ({len(pattern)} > {MAX_SPEC_CHARS} characters)")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None
    if _UNSUPPORTED_REGEX.search(pattern):
        raise ValueError(f"invalid regex {pattern!r}: lookaround and backreferences are not supported")


def spec_to_regex(
    kind: str,
    spec: Any,
    whitespace: str = DEFAULT_WHITESPACE,
    json_object_depth: int = DEFAULT_JSON_OBJECT_DEPTH,
) -> str:
    """The regex for a ``(kind, spec)`` constraint.  Raises ValueError if it is invalid."""
    if kind == "regex":
        check_regex(spec)
        return spec
    if kind == "choices":
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as exc:
                raise ValueError(f"choices must be a JSON list of strings: {exc}") from None
        if not isinstance(spec, (list, tuple)) or not spec or not all(isinstance(c, str) for c in spec):
            raise ValueError("choices must be a non-empty list of strings")
        check_choices(spec)
        return choices_regex(list(spec))
    if kind == "json_object":
        return json_object_regex(json_object_depth, whitespace)
    if kind == "json":
        schema, ranges = rewrite_bounded_numbers(parse_schema(spec))
        try:
            regex = build_regex_from_schema(json.dumps(schema), whitespace)
        except Exception as exc:  # outlines raises ValueError/TypeError/others for unsupported parts
            raise ValueError(f"unsupported JSON schema: {str(exc).splitlines()[0]}") from None
        # outlines' uri format uses [^\s...] classes that admit '"', '\\' and control
        # characters, which would end or corrupt the JSON string: exclude them.
        regex = regex.replace("[^\\s", '[^\\s"\\\\\\x00-\\x1F')
        return ascii_digits(substitute_placeholders(regex, ranges))
    raise ValueError(f"unknown constraint kind {kind!r}; expected one of {GRAMMAR_KINDS}")


def validate_spec(kind: str, spec: Any, whitespace: str = DEFAULT_WHITESPACE) -> None:
    """Raise ValueError (with the reason) if ``(kind, spec)`` is certainly invalid.

    Cheap (no Index is built), so the HTTP layer can call it and answer 400.  A spec that
    passes can still fail to compile (e.g. a regex the vocabulary cannot spell); that
    failure surfaces through the GrammarCache as an InvalidGrammar."""
    spec_to_regex(kind, spec, whitespace)
