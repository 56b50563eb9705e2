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

# dtype -> (regex, extra stop strings). Same table as SGLang so programs port 1:1.
REGEX_INT = r"[-+]?[0-9]+[ \n]*"
REGEX_FLOAT = r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
REGEX_STR = r"\"[\w\d\s]*\""
REGEX_BOOL = r"(True|False)"

_DTYPE_TABLE: dict[str, tuple[str, list[str]]] = {
    "int": (REGEX_INT, [" ", "\n"]),
    "float": (REGEX_FLOAT, [" ", "\n"]),
    "str": (REGEX_STR, []),
    "bool": (REGEX_BOOL, []),
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

    def to_srt_kwargs(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Return ``(sampling_params, top_level)`` for SGLang's ``/generate`` body."""
        from sglite.global_config import global_config

        regex, stop = self.regex, _as_list(self.stop)
        if self.dtype is not None:
            if regex is not None:
                logger.warning("both dtype and regex are set; dtype=%s wins", self.dtype)
            regex, extra_stop = _DTYPE_TABLE[self.dtype]
            stop = stop + [s for s in extra_stop if s not in stop]
        if regex is not None and self.json_schema is not None:
            raise ValueError("a gen may use only one of regex/dtype and json_schema")
        sp: dict[str, Any] = {
            "skip_special_tokens": global_config.skip_special_tokens_in_output,
            "spaces_between_special_tokens": global_config.spaces_between_special_tokens_in_out,
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
            sp["seed"] = self.seed  # sglite_runtime.SamplingParams.seed
        top: dict[str, Any] = {}
        for name in ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs"):
            value = getattr(self, name)
            if value is not None:
                top[name] = value
        return sp, top


def validate_regex(regex: Optional[str]) -> None:
    """Fail at program-build time (``re.error``) rather than deep in the server."""
    if regex is not None:
        re.compile(regex)
