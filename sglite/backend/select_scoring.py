"""Score ``select`` choices on exactly the choice's own tokens.

Upstream SGLang scored from ``prompt_tokens - 2`` "for token healing", mixing
context tokens into the score (#1257, #2873, #608). We instead align by token
ids: with ``C = tok(T)`` and ``X = tok(T + c)``, the scored tokens are ``X[P:]``
where ``P`` is the longest common prefix of ``C`` and ``X``. If the choice
merges with the last context token (``"ap" + "ple"`` -> ``" apple"``), that
merged token is scored too, which is the only honest option: it is where the
choice's probability lives.

Requests (SGLang's /generate contract):
1. one list request ``text=[T, T+c0, T+c1, ...]`` with ``max_new_tokens=0``,
   ``return_logprob``, ``logprob_start_len=0``, ``return_text_in_logprobs`` —
   the first item only yields ``tok(T)`` ids (omitted when ``T`` is empty);
2. for ``unconditional_likelihood_normalized``: ``input_ids=[[bos?] + X[P:]]``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from sglite.lang.choices import ChoicesDecision, ChoicesSamplingMethod

if TYPE_CHECKING:
    from sglite.backend.base import BaseBackend

_PREFILL_ONLY = {"max_new_tokens": 0, "temperature": 0}


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


def _as_list(resp: Any) -> list[dict[str, Any]]:
    return resp if isinstance(resp, list) else [resp]


def score_choices(
    backend: "BaseBackend",
    text: str,
    choices: list[str],
    temperature: float,
    method: ChoicesSamplingMethod,
    image_data: Optional[list[str]] = None,
) -> ChoicesDecision:
    """Return the decision of ``method`` plus aligned per-choice logprobs in meta_info."""
    if temperature > 1e-5:
        raise ValueError("select supports only temperature 0 (deterministic scoring)")
    if not choices:
        raise ValueError("select needs at least one choice")

    texts = ([text] if text else []) + [text + c for c in choices]
    payload: dict[str, Any] = {
        "text": texts,
        "sampling_params": dict(_PREFILL_ONLY),
        "return_logprob": True,
        "logprob_start_len": 0,
        "return_text_in_logprobs": True,
    }
    if image_data:
        payload["image_data"] = [image_data[0] if len(image_data) == 1 else image_data] * len(texts)
    resp = _as_list(backend._generate_raw(payload))
    if len(resp) != len(texts):
        raise RuntimeError(f"select: expected {len(texts)} responses, got {len(resp)}")

    ctx_ids: list[int] = []
    if text:
        ctx_ids = [t[1] for t in resp[0]["meta_info"]["input_token_logprobs"]]
        resp = resp[1:]

    bos = backend.get_model_info().get("bos_token")
    scored_all: list[list[list[Any]]] = []
    starts: list[int] = []
    has_bos = False
    for r in resp:
        toks = [list(t) for t in r["meta_info"]["input_token_logprobs"]]
        ids = [t[1] for t in toks]
        p = _common_prefix_len(ctx_ids, ids)
        # A BOS added by the tokenizer is context even when T is empty.
        if p == 0 and toks and bos and toks[0][2] == bos:
            p, has_bos = 1, True
        elif p >= 1 and bos and toks[0][2] == bos:
            has_bos = True
        p = min(p, max(len(ids) - 1, 0))  # always score at least one token
        starts.append(p)
        scored_all.append(toks[p:])

    normalized = [_mean([t[0] for t in toks]) for toks in scored_all]
    unconditional = None
    if method.requires_unconditional_logprobs:
        bos_id = resp[0]["meta_info"]["input_token_logprobs"][0][1] if has_bos else None
        prefix = [bos_id] if bos_id is not None else []
        uresp = _as_list(backend._generate_raw({
            "input_ids": [prefix + [t[1] for t in toks] for toks in scored_all],
            "sampling_params": dict(_PREFILL_ONLY),
            "return_logprob": True,
            "logprob_start_len": 0,
            "return_text_in_logprobs": True,
        }))
        unconditional = [[list(t) for t in u["meta_info"]["input_token_logprobs"]][len(prefix):] for u in uresp]

    decision = method(
        choices=choices,
        normalized_prompt_logprobs=normalized,
        input_token_logprobs=scored_all,
        output_token_logprobs=[[] for _ in choices],
        unconditional_token_logprobs=unconditional,
    )
    meta = {
        "normalized_prompt_logprobs": normalized,
        "input_token_logprobs": scored_all,
        "output_token_logprobs": [[] for _ in choices],
        "scored_token_start": starts,
        "prompt_tokens": [r["meta_info"].get("prompt_tokens") for r in resp],
        "choices_method": method.name,
    }
    meta.update(decision.meta_info)
    return ChoicesDecision(decision.decision, meta)
