"""Per-request sampling parameters, with SGLang's names, defaults and error wording.

Life cycle (see docs/INTERNALS.md, "Sampling")::

    sp = SamplingParams.from_dict(user_dict)   # unknown key / wrong type -> ValueError
    sp.normalize(tokenizer)                    # canonical shapes: stop list, stop id set, greedy flag
    sp.verify(vocab_size)                      # ranges -> ValueError (HTTP 400 upstream)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# Temperatures below this are treated as greedy decoding (SGLang uses the same epsilon).
_SAMPLING_EPS = 1e-6
# Integers cross the process boundary as msgpack int64 (seeds as uint64, hashed as 64 bits).
_INT64_MIN, _INT64_MAX, _UINT64_MAX = -(2**63), 2**63 - 1, 2**64 - 1
# Stop strings are searched in the decoded tail at every step: bound their number and size.
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_LEN = 1024


@dataclass
class SamplingParams:
    """Sampling parameters of one request (one completion when ``n > 1``)."""

    max_new_tokens: int | None = 128
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | set[int] | None = None
    ignore_eos: bool = False
    n: int = 1
    seed: int | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    regex: str | None = None
    json_schema: str | None = None
    choices: list[str] | None = None
    # A context-free grammar in SGLang's EBNF syntax (``root ::= ...``), compiled by xgrammar.
    ebnf: str | None = None
    # The constraint applies after "</think>": the thinking before it is free (set by the
    # chat route when a reasoning parser is on; SGLang's request field of the same name).
    require_reasoning: bool = False
    stop_regex: str | list[str] | None = None
    # OpenAI style: token id (as a string or int) -> additive bias on the logit.
    logit_bias: dict[str, float] | None = None

    # Derived by normalize(); not user-settable, so excluded from from_dict()/to_dict().
    is_greedy: bool = field(default=False, init=False, compare=False)
    stop_str_max_len: int = field(default=0, init=False, compare=False)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingParams:
        """Build from a user-supplied dict, rejecting unknown keys and wrong types.

        Raises:
            ValueError: ``"Unknown sampling parameter: 'x'"`` or a type message such as
                ``"top_k must be an integer, got 1.5 (float)."``.
        """
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise ValueError(f"sampling_params must be an object, got {type(d).__name__}.")
        allowed = _user_field_names()
        for key in d:
            if key not in allowed:
                raise ValueError(f"Unknown sampling parameter: {key!r}")
        sp = cls(**d)
        sp.check_types()
        return sp

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict of the user-facing fields (round-trips through from_dict)."""
        out: dict[str, Any] = {}
        for name in _user_field_names():
            value = getattr(self, name)
            if isinstance(value, set):
                value = sorted(value)
            elif isinstance(value, (list, dict)):
                value = type(value)(value)  # shallow copy so callers cannot alias our state
            out[name] = value
        return out

    # ------------------------------------------------------------------ checks

    def check_types(self) -> None:
        """Raise ValueError when a field has the wrong JSON type (bools are not numbers, no
        coercion), an integer does not fit 64 bits, a float is not finite or a string is not
        valid Unicode (a lone surrogate)."""
        for name in ("temperature", "top_p", "min_p", "frequency_penalty",
                     "presence_penalty", "repetition_penalty"):
            v = getattr(self, name)
            if not _is_number(v):
                raise ValueError(f"{name} must be a number, got {_show(v)}.")
            if not _finite(v):
                raise ValueError(f"{name} must be a finite number, got {_show(v)}.")
        for name in ("min_new_tokens", "top_k", "n"):
            v = getattr(self, name)
            if not _is_int(v):
                raise ValueError(f"{name} must be an integer, got {_show(v)}.")
        for name in ("max_new_tokens", "seed"):
            v = getattr(self, name)
            if v is not None and not _is_int(v):
                raise ValueError(f"{name} must be an integer or null, got {_show(v)}.")
        for name in ("min_new_tokens", "top_k", "n", "max_new_tokens"):
            v = getattr(self, name)
            if v is not None and not _INT64_MIN <= v <= _INT64_MAX:
                raise ValueError(f"{name} does not fit a 64-bit integer, got {_show(v)}.")
        if self.seed is not None and not _INT64_MIN <= self.seed <= _UINT64_MAX:
            raise ValueError(f"seed must be in [-2^63, 2^64), got {_show(self.seed)}.")
        for name in ("ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
                     "no_stop_trim", "require_reasoning"):
            v = getattr(self, name)
            if not isinstance(v, bool):
                raise ValueError(f"{name} must be a boolean, got {_show(v)}.")
        for name in ("stop", "stop_regex"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str) and not _is_str_list(v):
                raise ValueError(f"{name} must be a string or a list of strings, got {_show(v)}.")
            items = [v] if isinstance(v, str) else list(v or ())
            if len(items) > MAX_STOP_STRINGS:
                raise ValueError(f"{name} may hold at most {MAX_STOP_STRINGS} strings, got {len(items)}.")
            for item in items:
                if len(item) > MAX_STOP_STRING_LEN:
                    raise ValueError(f"each {name} string may be at most {MAX_STOP_STRING_LEN} characters, "
                                     f"got {len(item)}.")
                check_unicode(item, name)
        if self.stop_token_ids is not None and not (
            isinstance(self.stop_token_ids, (list, tuple, set))
            and all(_is_int(t) for t in self.stop_token_ids)
        ):
            raise ValueError(
                f"stop_token_ids must be a flat list of integers, got {_show(self.stop_token_ids)}."
            )
        if self.regex is not None and not isinstance(self.regex, str):
            raise ValueError(f"regex must be a string, got {_show(self.regex)}.")
        if self.json_schema is not None and not isinstance(self.json_schema, (str, dict)):
            raise ValueError(f"json_schema must be a string or an object, got {_show(self.json_schema)}.")
        if self.choices is not None and not _is_str_list(self.choices):
            raise ValueError(f"choices must be a list of strings, got {_show(self.choices)}.")
        if self.ebnf is not None and not isinstance(self.ebnf, str):
            raise ValueError(f"ebnf must be a string, got {_show(self.ebnf)}.")
        for name in ("regex", "json_schema", "choices", "ebnf"):
            check_unicode(getattr(self, name), name)
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict) or not all(
                _is_number(b) and (_is_int(k) or isinstance(k, str))
                for k, b in self.logit_bias.items()
            ):
                raise ValueError(
                    "logit_bias must be an object mapping token ids to numbers, "
                    f"got {_show(self.logit_bias)}."
                )
            for k, b in self.logit_bias.items():
                if not _finite(b):
                    raise ValueError(f"logit_bias values must be finite numbers, got {_show(b)} for {k!r}.")

    def normalize(self, tokenizer: Any = None) -> SamplingParams:
        """Put fields into canonical form; idempotent. Returns self.

        - ``stop`` / ``stop_regex`` become ``list[str]`` (empty when unset);
        - ``stop_token_ids`` becomes a ``set[int]`` (fast membership checks per step);
        - temperature < 1e-6 means greedy: ``is_greedy = True`` and ``top_k = 1``
          (the temperature value itself is kept, so verify() still sees it);
        - ``stop_str_max_len``: longest stop string, in tokens when a tokenizer is given
          (the detokenizer keeps that many trailing tokens undecided), else in characters;
        - a dict ``json_schema`` is serialized to a JSON string (the grammar cache key).
        """
        if self.stop is None:
            self.stop = []
        elif isinstance(self.stop, str):
            self.stop = [self.stop]
        else:
            self.stop = list(self.stop)
        if self.stop_regex is None:
            self.stop_regex = []
        elif isinstance(self.stop_regex, str):
            self.stop_regex = [self.stop_regex]
        else:
            self.stop_regex = list(self.stop_regex)
        self.stop_token_ids = set(self.stop_token_ids or ())
        if isinstance(self.json_schema, dict):
            self.json_schema = json.dumps(self.json_schema)
        if _is_number(self.temperature) and self.temperature < _SAMPLING_EPS:
            self.is_greedy = True
            self.top_k = 1
        elif self.top_k == 1:
            # top_k == 1 is argmax whatever the temperature.
            self.is_greedy = True
        self.stop_str_max_len = self._stop_len(tokenizer)
        return self

    def _stop_len(self, tokenizer: Any) -> int:
        stops = self.stop if isinstance(self.stop, list) else []
        if not stops:
            return 0
        if tokenizer is None:
            return max(len(s) for s in stops)
        lengths = []
        for s in stops:
            try:
                ids = tokenizer.encode(s, add_special_tokens=False)
            except TypeError:  # tokenizers without that keyword
                ids = tokenizer.encode(s)
            if hasattr(ids, "ids"):  # `tokenizers.Encoding`
                ids = ids.ids
            lengths.append(len(ids))
        return max(lengths)

    def verify(self, vocab_size: int | None = None) -> None:
        """Range checks with SGLang/vLLM wording; raises ValueError on the first problem."""
        self.check_types()
        # Comparisons are written as `not (ok)` so that NaN is rejected too.
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 1 and self.top_k != -1:
            raise ValueError(f"top_k must be -1 (disable), or at least 1, got {self.top_k}.")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}.")
        if not -2.0 <= self.frequency_penalty <= 2.0:
            raise ValueError(f"frequency_penalty must be in [-2, 2], got {self.frequency_penalty}.")
        if not -2.0 <= self.presence_penalty <= 2.0:
            raise ValueError(f"presence_penalty must be in [-2, 2], got {self.presence_penalty}.")
        if not 0.0 < self.repetition_penalty <= 2.0:
            raise ValueError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}.")
        if self.max_new_tokens is not None and self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be at least 0, got {self.max_new_tokens}.")
        if self.min_new_tokens < 0 or (
            self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens
        ):
            raise ValueError(
                f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}."
            )
        if self.n < 1:
            raise ValueError(f"n must be at least 1, got {self.n}.")
        stop_regex = [self.stop_regex] if isinstance(self.stop_regex, str) else self.stop_regex or []
        for pattern in stop_regex:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(f"stop_regex {pattern!r} is not a valid regular expression: {e}.") from None
        if vocab_size is not None:
            for t in sorted(self.stop_token_ids or ()):
                if not 0 <= t < vocab_size:
                    raise ValueError(
                        f"stop_token_ids contains token id {t}, which is out of vocabulary "
                        f"(vocab size {vocab_size})."
                    )
        for key in self.logit_bias or {}:
            try:
                t = int(key)
            except ValueError:
                raise ValueError(f"logit_bias key {key!r} is not a token id.") from None
            if t < 0 or (vocab_size is not None and t >= vocab_size):
                raise ValueError(
                    f"logit_bias contains token id {t}, which is out of vocabulary "
                    f"(vocab size {vocab_size})."
                )
        if sum(x is not None for x in (self.regex, self.json_schema, self.choices, self.ebnf)) > 1:
            raise ValueError("Only one of regex, json_schema, choices or ebnf can be set.")
        if self.choices is not None and len(self.choices) == 0:
            raise ValueError("choices must be a non-empty list of strings.")

    # ------------------------------------------------------------------ helpers

    def logit_bias_items(self) -> list[tuple[int, float]]:
        """``logit_bias`` as (token id, bias) pairs with int ids."""
        return [(int(k), float(v)) for k, v in (self.logit_bias or {}).items()]


def _user_field_names() -> tuple[str, ...]:
    return _USER_FIELDS


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    # Python ints never overflow here, but huge ones can't become floats: compare, don't convert.
    return _is_int(v) or math.isfinite(v)


def check_unicode(value: Any, name: str) -> None:
    """Raise ValueError when a string (or any string inside lists/dicts) is not valid Unicode.

    JSON allows escaped lone surrogates (``"\\ud800"``), which Python keeps in ``str`` but no
    tokenizer, encoder or regex engine downstream accepts.
    """
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{name} is not valid Unicode: it holds a lone surrogate at index {e.start}.") from None
    elif isinstance(value, dict):
        for k, v in value.items():
            check_unicode(k, name)
            check_unicode(v, name)
    elif isinstance(value, (list, tuple)):
        for v in value:
            check_unicode(v, name)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(s, str) for s in v)


def _show(v: Any) -> str:
    text = repr(v)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(v).__name__})"


_USER_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SamplingParams) if f.init)


def check_context_length(sp: SamplingParams, num_tokens: int, context_len: int,
                         max_total_tokens: int | None = None) -> None:
    """Fit a request of ``num_tokens`` prompt tokens to the context: ``max_new_tokens=None``
    becomes whatever room is left; an empty, too long or overflowing request is a ValueError
    (SGLang's wording, which client libraries match).

    ``max_total_tokens`` is the KV pool's size: when it is smaller than the context, a request
    whose prompt plus ``max_new_tokens`` exceeds it could never finish (it would run out of
    KV slots alone in the pool), so it is refused here, and an unset ``max_new_tokens`` fills
    the pool rather than the context.
    """
    if num_tokens == 0:
        raise ValueError("The input is empty: send a non-empty prompt.")
    if num_tokens >= context_len:
        raise ValueError(f"The input ({num_tokens} tokens) is longer than the model's context length "
                         f"({context_len} tokens).")
    pool = max_total_tokens if max_total_tokens is not None and max_total_tokens < context_len else None
    if pool is not None and num_tokens >= pool:
        raise ValueError(f"The input ({num_tokens} tokens) does not fit in the KV cache ({pool} tokens, "
                         "--max-total-tokens).")
    if sp.max_new_tokens is None:
        sp.max_new_tokens = (pool if pool is not None else context_len) - num_tokens
    total = num_tokens + sp.max_new_tokens
    if total > context_len:
        raise ValueError(
            f"Requested token count exceeds the model's maximum context length of {context_len} tokens. "
            f"You requested a total of {total} tokens: {num_tokens} tokens from the input messages and "
            f"{sp.max_new_tokens} tokens for the completion. Please reduce the number of tokens in the input "
            "messages or the completion to fit within the limit.")
    if pool is not None and total > pool:
        raise ValueError(
            f"The request can never fit in the KV cache: {num_tokens} prompt tokens plus max_new_tokens="
            f"{sp.max_new_tokens} need {total} token slots, but the KV cache holds {pool} tokens "
            "(--max-total-tokens). Lower max_new_tokens or the prompt.")
