"""SamplingParams: from_dict, normalize, verify (wording matches SGLang/vLLM)."""

from __future__ import annotations

import pytest

from sglite_runtime.sampling.sampling_params import SamplingParams

BAD = [
    ({"temperature": -1}, "temperature must be non-negative, got -1."),
    ({"top_p": 0}, "top_p must be in (0, 1], got 0."),
    ({"top_p": 1.5}, "top_p must be in (0, 1], got 1.5."),
    ({"top_k": 0}, "top_k must be -1 (disable), or at least 1, got 0."),
    ({"top_k": -2}, "top_k must be -1 (disable), or at least 1, got -2."),
    ({"min_p": 2}, "min_p must be in [0, 1], got 2."),
    ({"frequency_penalty": 3}, "frequency_penalty must be in [-2, 2], got 3."),
    ({"presence_penalty": -3}, "presence_penalty must be in [-2, 2], got -3."),
    ({"repetition_penalty": 0}, "repetition_penalty must be in (0, 2], got 0."),
    ({"max_new_tokens": -1}, "max_new_tokens must be at least 0, got -1."),
    ({"max_new_tokens": 4, "min_new_tokens": 5}, "min_new_tokens must be in [0, max_new_tokens], got 5."),
    ({"min_new_tokens": -1}, "min_new_tokens must be in [0, max_new_tokens], got -1."),
    ({"n": 0}, "n must be at least 1, got 0."),
    ({"stop_token_ids": [5, 100]}, "stop_token_ids contains token id 100, which is out of vocabulary"),
    ({"logit_bias": {"100": 1.0}}, "logit_bias contains token id 100, which is out of vocabulary"),
    ({"regex": "a+", "choices": ["a"]}, "Only one of regex, json_schema, choices or ebnf can be set."),
    ({"regex": "a+", "json_schema": "{}"}, "Only one of regex, json_schema, choices or ebnf can be set."),
    ({"regex": "a+", "ebnf": 'root ::= "a"'}, "Only one of regex, json_schema, choices or ebnf can be set."),
]


@pytest.mark.parametrize("d,msg", BAD)
def test_verify_rejects(d: dict, msg: str) -> None:
    sp = SamplingParams.from_dict(d).normalize()
    with pytest.raises(ValueError) as e:
        sp.verify(vocab_size=100)
    assert str(e.value).startswith(msg), str(e.value)


GOOD = [
    {},
    {"temperature": 0}, {"temperature": 2.5}, {"top_p": 1}, {"top_p": 0.01},
    {"top_k": -1}, {"top_k": 1}, {"top_k": 50}, {"min_p": 0}, {"min_p": 1},
    {"frequency_penalty": -2, "presence_penalty": 2}, {"repetition_penalty": 2},
    {"repetition_penalty": 0.5}, {"max_new_tokens": 0}, {"max_new_tokens": None},
    {"max_new_tokens": 5, "min_new_tokens": 5}, {"n": 4}, {"seed": 2**64 - 1}, {"seed": -(2**63)},
    {"stop": "x", "stop_token_ids": [0, 99]}, {"json_schema": {"type": "object"}},
    {"choices": ["a", "b"]}, {"logit_bias": {"3": -100, 4: 2.5}}, {"stop_regex": "a+"},
]


@pytest.mark.parametrize("d", GOOD)
def test_verify_accepts(d: dict) -> None:
    sp = SamplingParams.from_dict(d).normalize()
    sp.verify(vocab_size=100)


def test_from_dict_unknown_key() -> None:
    with pytest.raises(ValueError, match=r"^Unknown sampling parameter: 'bogus'$"):
        SamplingParams.from_dict({"temperature": 1.0, "bogus": 1})
    # Derived fields are not user-settable.
    with pytest.raises(ValueError, match="Unknown sampling parameter: 'is_greedy'"):
        SamplingParams.from_dict({"is_greedy": True})


@pytest.mark.parametrize("d,fragment", [
    ({"temperature": "hot"}, "temperature must be a number, got 'hot' (str)."),
    ({"temperature": True}, "temperature must be a number"),
    ({"top_k": 1.5}, "top_k must be an integer, got 1.5 (float)."),
    ({"max_new_tokens": "4"}, "max_new_tokens must be an integer or null"),
    ({"stop": 3}, "stop must be a string or a list of strings"),
    ({"stop": ["a", 1]}, "stop must be a string or a list of strings"),
    ({"stop_token_ids": [[1, 2]]}, "stop_token_ids must be a flat list of integers"),
    ({"ignore_eos": 1}, "ignore_eos must be a boolean"),
    ({"choices": "ab"}, "choices must be a list of strings"),
    ({"logit_bias": {"1": "x"}}, "logit_bias must be an object"),
    # Values no client means and that cannot cross the process boundary (msgpack is 64-bit).
    ({"temperature": float("nan")}, "temperature must be a finite number"),
    ({"temperature": float("inf")}, "temperature must be a finite number"),
    ({"seed": 2**64}, "seed must be in [-2^63, 2^64)"),
    ({"top_k": 2**63}, "top_k does not fit a 64-bit integer"),
    ({"max_new_tokens": -(2**63) - 1}, "max_new_tokens does not fit a 64-bit integer"),
    ({"logit_bias": {"1": float("nan")}}, "logit_bias values must be finite"),
    ({"stop": "a\ud800"}, "stop is not valid Unicode"),
    ({"choices": ["ok", "\udfff"]}, "choices is not valid Unicode"),
    ({"json_schema": {"\ud800": 1}}, "json_schema is not valid Unicode"),
    ({"stop": ["x"] * 65}, "stop may hold at most 64 strings"),
])
def test_from_dict_types(d: dict, fragment: str) -> None:
    with pytest.raises(ValueError) as e:
        SamplingParams.from_dict(d)
    assert fragment in str(e.value)


def test_defaults_match_sglang() -> None:
    sp = SamplingParams()
    assert (sp.max_new_tokens, sp.min_new_tokens, sp.temperature, sp.top_p, sp.top_k, sp.min_p) == (
        128, 0, 1.0, 1.0, -1, 0.0)
    assert (sp.frequency_penalty, sp.presence_penalty, sp.repetition_penalty) == (0.0, 0.0, 1.0)
    assert sp.stop is None and sp.stop_token_ids is None and not sp.ignore_eos and sp.n == 1
    assert sp.skip_special_tokens and sp.spaces_between_special_tokens and not sp.no_stop_trim


class _Tok:
    def encode(self, s: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False
        return list(range(len(s.split())))


def test_normalize() -> None:
    sp = SamplingParams(stop="end", stop_token_ids=[3, 3, 4], temperature=0.0).normalize()
    assert sp.stop == ["end"] and sp.stop_token_ids == {3, 4}
    assert sp.is_greedy and sp.top_k == 1 and sp.stop_str_max_len == 3
    sp.normalize()  # idempotent
    assert sp.stop == ["end"] and sp.is_greedy
    sp = SamplingParams(stop=["a b c", "d"]).normalize(_Tok())
    assert sp.stop_str_max_len == 3 and not sp.is_greedy
    sp = SamplingParams().normalize()
    assert sp.stop == [] and sp.stop_token_ids == set() and sp.stop_str_max_len == 0
    assert SamplingParams(json_schema={"type": "string"}).normalize().json_schema == '{"type": "string"}'


def test_to_dict_round_trip() -> None:
    sp = SamplingParams.from_dict({"stop": "x", "stop_token_ids": [5, 2], "seed": 7, "top_k": 3})
    sp.normalize()
    d = sp.to_dict()
    assert d["stop"] == ["x"] and d["stop_token_ids"] == [2, 5] and "is_greedy" not in d
    again = SamplingParams.from_dict(d).normalize()
    assert again == sp
