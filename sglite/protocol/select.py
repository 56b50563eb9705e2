"""A ``select`` as a protocol: the requests to send, then the decision from their results.

No I/O here: the interpreter's backends (``sglite.backend.select_scoring``, synchronous HTTP or
Engine calls) and the server's program executor (async ``TokenizerManager`` requests) both send
the payloads these functions build and hand the responses back, so a select scores the same
tokens and decides the same way on either side.

Upstream SGLang scored from ``prompt_tokens - 2`` "for token healing", mixing context tokens
into the score (#1257, #2873, #608). We instead align by token ids: with ``C = tok(T)`` and
``X = tok(T + c)``, the scored tokens are ``X[P:]`` where ``P`` is the longest common prefix of
``C`` and ``X``. If the choice merges with the last context token (``"ap" + "ple"`` ->
``" apple"``), that merged token is scored too: it is where the choice's probability lives.

Requests (SGLang's /generate contract):
1. ``scoring_request``: one list request ``text=[T, T+c0, T+c1, ...]`` with
   ``max_new_tokens=0``, ``return_logprob``, ``logprob_start_len=0``,
   ``return_text_in_logprobs``; the first item only yields ``tok(T)`` ids (omitted when ``T`` is empty);
2. ``unconditional_request`` (only for ``unconditional_likelihood_normalized``):
   ``input_ids=[[bos?] + X[P:]]``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from sglite.protocol.choices import (
    ChoicesDecision, ChoicesSamplingMethod, greedy_token_selection, token_length_normalized,
    unconditional_likelihood_normalized,
)

PREFILL_ONLY = {"max_new_tokens": 0, "temperature": 0}
Response = dict[str, Any]


@dataclass
class ChoiceScores:
    """The choices' own tokens, aligned against the context (the result of request 1)."""

    scored: list[list[list[Any]]]  # per choice: [logprob, token_id, text] of its own tokens
    starts: list[int]  # index of each choice's first scored token in tok(T + c)
    bos_id: Optional[int]  # the tokenizer's BOS id when it added one, else None
    prompt_tokens: list[Optional[int]]


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _mean(values: list[Optional[float]]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else 0.0


def as_list(resp: Any) -> list[Response]:
    """A /generate answer for a list request (a single dict when the list had one item)."""
    return resp if isinstance(resp, list) else [resp]


def scoring_request(text: str, choices: list[str], temperature: float,
                    image_data: Optional[list[str]] = None) -> dict[str, Any]:
    """The /generate payload that scores every choice after ``text`` (request 1)."""
    if temperature > 1e-5:
        raise ValueError("select supports only temperature 0 (deterministic scoring)")
    if not choices:
        raise ValueError("select needs at least one choice")
    texts = ([text] if text else []) + [text + c for c in choices]
    payload: dict[str, Any] = {"text": texts, "sampling_params": dict(PREFILL_ONLY), "return_logprob": True,
                               "logprob_start_len": 0, "return_text_in_logprobs": True}
    if image_data:
        payload["image_data"] = [image_data[0] if len(image_data) == 1 else image_data] * len(texts)
    return payload


def align_scores(text: str, choices: list[str], responses: Any, bos_token: Optional[str]) -> ChoiceScores:
    """Cut each ``tok(T + c)`` down to the choice's own tokens (the answer to request 1)."""
    resp = as_list(responses)
    expected = len(choices) + (1 if text else 0)
    if len(resp) != expected:
        raise RuntimeError(f"select: expected {expected} responses, got {len(resp)}")
    ctx_ids: list[int] = []
    if text:
        ctx_ids = [t[1] for t in resp[0]["meta_info"]["input_token_logprobs"]]
        resp = resp[1:]
    scored: list[list[list[Any]]] = []
    starts: list[int] = []
    has_bos = False
    for r in resp:
        toks = [list(t) for t in r["meta_info"]["input_token_logprobs"]]
        ids = [t[1] for t in toks]
        p = _common_prefix_len(ctx_ids, ids)
        # A BOS added by the tokenizer is context even when T is empty.
        if p == 0 and toks and bos_token and toks[0][2] == bos_token:
            p, has_bos = 1, True
        elif p >= 1 and bos_token and toks[0][2] == bos_token:
            has_bos = True
        p = min(p, max(len(ids) - 1, 0))  # always score at least one token
        starts.append(p)
        scored.append(toks[p:])
    bos_id = resp[0]["meta_info"]["input_token_logprobs"][0][1] if has_bos else None
    return ChoiceScores(scored, starts, bos_id, [r["meta_info"].get("prompt_tokens") for r in resp])


def unconditional_request(scores: ChoiceScores) -> dict[str, Any]:
    """The payload scoring each choice's tokens without context (request 2)."""
    prefix = [scores.bos_id] if scores.bos_id is not None else []
    return {"input_ids": [prefix + [t[1] for t in toks] for toks in scores.scored],
            "sampling_params": dict(PREFILL_ONLY), "return_logprob": True, "logprob_start_len": 0,
            "return_text_in_logprobs": True}


def select_decision(choices: list[str], method: ChoicesSamplingMethod, scores: ChoiceScores,
                    unconditional_responses: Any = None) -> ChoicesDecision:
    """The decision of ``method`` plus aligned per-choice logprobs in ``meta_info``."""
    normalized = [_mean([t[0] for t in toks]) for toks in scores.scored]
    unconditional = None
    if method.requires_unconditional_logprobs:
        if unconditional_responses is None:
            raise ValueError(f"select method {method.name!r} needs the unconditional_request's results")
        skip = 1 if scores.bos_id is not None else 0
        unconditional = [[list(t) for t in u["meta_info"]["input_token_logprobs"]][skip:]
                         for u in as_list(unconditional_responses)]
    decision = method(choices=choices, normalized_prompt_logprobs=normalized,
                      input_token_logprobs=scores.scored, output_token_logprobs=[[] for _ in choices],
                      unconditional_token_logprobs=unconditional)
    meta = {"normalized_prompt_logprobs": normalized, "input_token_logprobs": scores.scored,
            "output_token_logprobs": [[] for _ in choices], "scored_token_start": scores.starts,
            "prompt_tokens": scores.prompt_tokens, "choices_method": method.name}
    meta.update(decision.meta_info)
    return ChoicesDecision(decision.decision, meta)


def method_by_name(name: Optional[str]) -> ChoicesSamplingMethod:
    """The built-in select method a graph node names (default ``token_length_normalized``)."""
    table = {m.name: m for m in (token_length_normalized, greedy_token_selection,
                                 unconditional_likelihood_normalized)}
    key = name or "token_length_normalized"
    if key not in table:
        raise ValueError(f"unknown select method {key!r}; expected one of {sorted(table)}")
    return table[key]
