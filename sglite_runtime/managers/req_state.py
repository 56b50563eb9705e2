"""One request as the TokenizerManager tracks it (``ReqState``), and its ``/generate`` answer shape.

``TokenizerManager._handle_str_out`` fills a ReqState from the detokenizer's messages; the
waiting coroutine turns it into SGLang's ``{"text", "output_ids", "meta_info"}`` with
``format_output`` (whole, or incremental for streaming: only the logprobs not sent yet).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from sglite_runtime.managers.io_struct import FinishReason, GenerateReqInput, finish_reason_json


@dataclass
class ReqState:
    """What the TokenizerManager knows of one request in flight: text, ids, meta, finish."""

    out_list: list[bool] = field(default_factory=list)  # one marker per update not yet read
    finished: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)
    text: str = ""
    output_ids: list[int] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    finish_reason: FinishReason | None = None  # set once, by the message that finishes the request
    created: float = field(default_factory=time.monotonic)
    first_token_time: float | None = None
    last_token_time: float | None = None


def format_output(rid: str, state: ReqState, s: GenerateReqInput, incremental: bool, tokenizer: Any) -> dict:
    """The ``/generate`` answer (or, ``incremental``, one streamed chunk) for one request."""
    m = state.meta
    meta: dict[str, Any] = {
        "id": rid,
        "finish_reason": finish_reason_json(state.finish_reason),
        "prompt_tokens": m.get("prompt_tokens", 0),
        "completion_tokens": m.get("completion_tokens", 0),
        "cached_tokens": m.get("cached_tokens", 0),
        "e2e_latency": time.monotonic() - state.created,
    }
    if s.return_logprob:
        with_text = s.return_text_in_logprobs
        if incremental:
            out_lp = m.pop("_pending_output_token_logprobs", [])
            out_top = m.pop("_pending_output_top_logprobs", [])
        else:
            out_lp, out_top = m.get("output_token_logprobs", []), m.get("output_top_logprobs", [])
        meta["output_token_logprobs"] = _triples(out_lp, with_text, tokenizer)
        meta["output_token_logprobs_length"] = m.get("completion_tokens", 0)
        meta["input_token_logprobs"] = _triples(m.get("input_token_logprobs") or [], with_text, tokenizer)
        if s.top_logprobs_num:
            meta["output_top_logprobs"] = [_triples(x or [], with_text, tokenizer) for x in out_top]
            meta["input_top_logprobs"] = [_triples(x, with_text, tokenizer) if x else None
                                          for x in (m.get("input_top_logprobs") or [])]
    return {"text": state.text, "output_ids": list(state.output_ids), "meta_info": meta}


def _triples(pairs: list, with_text: bool, tokenizer: Any) -> list[list]:
    """``(logprob, token id)`` pairs as SGLang's ``[logprob, token id, text or None]``."""
    if not with_text:
        return [[lp, tid, None] for lp, tid in pairs]
    return [[lp, tid, tokenizer.decode([tid])] for lp, tid in pairs]
