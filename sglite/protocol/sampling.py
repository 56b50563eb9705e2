"""Sampling parameters of one gen: program defaults, per-gen overrides, wire form."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Union

logger = logging.getLogger(__name__)

# dtype -> regex. SGLang's names; the patterns are tightened so that every typed gen is a
# valid literal (SGLang's REGEX_STR let raw newlines through and REGEX_INT had no length bound):
# int: JSON integer of at most 18 digits, so always inside int64;
# float: JSON number (no exponent), finite in float64;
# str: JSON string literal -- escapes allowed, raw control characters not;
# bool: Python's literals, as in SGLang (programs compare against "True").
REGEX_INT = r"-?(?:0|[1-9][0-9]{0,17})"
REGEX_FLOAT = r"-?(?:0|[1-9][0-9]{0,17})(?:\.[0-9]{1,15})?"
REGEX_STR = r'"(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"'
REGEX_BOOL = r"(True|False)"

_DTYPE_TABLE: dict[str, str] = {
    "int": REGEX_INT,
    "float": REGEX_FLOAT,
    "str": REGEX_STR,
    "bool": REGEX_BOOL,
}


def dtype_name(dtype: Any) -> Optional[str]:
    """Normalize ``int``/``"int"`` etc. to the table key; ``None`` passes through."""
    if dtype is None:
        return None
    name = dtype.__name__ if isinstance(dtype, type) else str(dtype)
    if name not in _DTYPE_TABLE:
        raise ValueError(f"unsupported dtype {dtype!r}; use int, float, str or bool")
    return name


def json_schema_to_str(schema: Any) -> Optional[str]:
    """Accept a JSON string, a dict, or a pydantic model class; return a JSON string.

    Pydantic is duck-typed (``model_json_schema``) so it is never imported here.
    """
    if schema is None or isinstance(schema, str):
        return schema
    if isinstance(schema, dict):
        return json.dumps(schema)
    to_schema = getattr(schema, "model_json_schema", None)
    if callable(to_schema):
        return json.dumps(to_schema())
    raise TypeError(
        f"json_schema must be a str, a dict or a pydantic model class, got {type(schema).__name__}"
    )


def _as_list(x: Union[None, str, int, list]) -> list:
    if x is None:
        return []
    if isinstance(x, (str, int)):
        return [x]
    return list(x)


@dataclass
class SglSamplingParams:
    """All knobs of one generation; ``None`` on a gen means "inherit from run()"."""

    max_new_tokens: Optional[int] = 128
    min_new_tokens: Optional[int] = None
    n: Optional[int] = 1
    stop: Union[None, str, list[str]] = field(default_factory=list)
    stop_token_ids: Optional[list[int]] = field(default_factory=list)
    stop_regex: Union[None, str, list[str]] = field(default_factory=list)
    temperature: Optional[float] = 1.0
    top_p: Optional[float] = 1.0
    top_k: Optional[int] = -1
    min_p: Optional[float] = 0.0
    frequency_penalty: Optional[float] = 0.0
    presence_penalty: Optional[float] = 0.0
    repetition_penalty: Optional[float] = None
    ignore_eos: Optional[bool] = False
    seed: Optional[int] = None
    return_logprob: Optional[bool] = None
    logprob_start_len: Optional[int] = None
    top_logprobs_num: Optional[int] = None
    return_text_in_logprobs: Optional[bool] = None
    # Constraints: dtype is sugar for a regex (and wins over an explicit regex).
    dtype: Optional[str] = None
    regex: Optional[str] = None
    json_schema: Optional[str] = None
    ebnf: Optional[str] = None  # a context-free grammar, SGLang's EBNF syntax (root ::= ...)

    def override(self, other: "SglSamplingParams") -> "SglSamplingParams":
        """Copy of ``self`` with every non-None field of ``other`` applied."""
        merged = copy.deepcopy(self)
        for f in dataclasses.fields(other):
            value = getattr(other, f.name)
            if value is not None:
                setattr(merged, f.name, copy.deepcopy(value))
        return merged

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_srt_kwargs(self, skip_special_tokens: bool = True,
                      spaces_between_special_tokens: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return ``(sampling_params, top_level)`` for SGLang's ``/generate`` body.

        The two flags are the client's ``sglite.global_config`` settings (passed in: the protocol
        has no process-wide state; the server's program executor uses SGLang's defaults).
        """
        regex, stop = self.regex, _as_list(self.stop)
        if self.dtype is not None:
            if regex is not None:
                logger.warning("both dtype and regex are set; dtype=%s wins", self.dtype)
            regex = _DTYPE_TABLE[self.dtype]
        if regex is not None and self.json_schema is not None:
            raise ValueError("a gen may use only one of regex/dtype and json_schema")
        sp: dict[str, Any] = {
            "skip_special_tokens": skip_special_tokens,
            "spaces_between_special_tokens": spaces_between_special_tokens,
            "max_new_tokens": self.max_new_tokens,
            "n": self.n,
            "stop": stop,
            "stop_token_ids": _as_list(self.stop_token_ids),
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "ignore_eos": self.ignore_eos,
            "regex": regex,
            "json_schema": self.json_schema,
        }
        # Optional fields travel only when set, so older servers are not confused.
        if self.min_new_tokens is not None:
            sp["min_new_tokens"] = self.min_new_tokens
        if self.repetition_penalty is not None:
            sp["repetition_penalty"] = self.repetition_penalty
        if self.seed is not None:
            sp["seed"] = self.seed
        if self.ebnf is not None:
            if regex is not None or self.json_schema is not None:
                raise ValueError("a gen may use only one of regex/dtype, json_schema and ebnf")
            sp["ebnf"] = self.ebnf
        if self.stop_regex:
            sp["stop_regex"] = _as_list(self.stop_regex)  # sglite_runtime.SamplingParams.seed
        top: dict[str, Any] = {}
        for name in ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs"):
            value = getattr(self, name)
            if value is not None:
                top[name] = value
        return sp, top


def typed_completion(dtype: Optional[str], text: str) -> str:
    """The suffix that closes a typed gen cut short (by ``max_tokens`` or an abort).

    The grammar keeps every typed gen a prefix of a valid literal; when the budget ends
    it early this completes it (a string gets its closing quote, a dangling escape is
    finished, a lone ``-`` becomes ``-0``) so that the value always parses. Append-only,
    so streamed text already handed out stays a prefix. ``""`` when nothing is missing.
    """
    if dtype is None or dtype not in _DTYPE_TABLE or re.fullmatch(_DTYPE_TABLE[dtype], text):
        return ""
    if dtype == "str":
        if not text:
            return '""'
        body = text[1:]
        m = re.search(r"(\\+)$", body)
        if m and len(m.group(1)) % 2 == 1:
            return '\\"'  # a lone trailing backslash: escape a backslash, then close
        m = re.search(r"\\u([0-9a-fA-F]{0,3})$", body)
        if m and (len(body) - len(m.group(0))) >= 0 and _escape_starts_at(body, len(body) - len(m.group(0))):
            return "0" * (4 - len(m.group(1))) + '"'
        return '"'
    if dtype == "bool":
        for word in ("True", "False"):
            if word.startswith(text):
                return word[len(text):]
        return ""
    if dtype in ("int", "float"):
        if text in ("", "-") or text.endswith("."):
            return "0"
    return ""


def _escape_starts_at(body: str, pos: int) -> bool:
    """True when the backslash at ``pos`` starts an escape (an even run of backslashes before it)."""
    run = 0
    while pos - run - 1 >= 0 and body[pos - run - 1] == "\\":
        run += 1
    return run % 2 == 0


def validate_regex(regex: Optional[str]) -> None:
    """Fail at program-build time (a one-line ``ValueError``) rather than deep in the server."""
    if regex is not None:
        try:
            re.compile(regex)
        except re.error as e:
            raise ValueError(f"invalid regex {regex!r}: {e}") from None
