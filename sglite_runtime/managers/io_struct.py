"""Typed messages that cross process boundaries, and their one codec (msgspec msgpack);
plus ``GenerateReqInput``, the native ``/generate`` request every entry builds (as in SGLang).

Flow: TokenizerManager → Scheduler (requests and control), Scheduler → Detokenizer
(``BatchTokenIDOut``), Detokenizer → TokenizerManager (``BatchStrOut``), and Scheduler →
TokenizerManager for control replies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union, cast

import msgspec


class FinishStop(msgspec.Struct, tag="stop", tag_field="type", omit_defaults=True, frozen=True):
    """Finished on a stop condition: ``matched`` is the stop string or regex, or the stop/EOS
    token id; None when a grammar terminated. ``regex``: ``matched`` is a stop regex."""

    matched: str | int | None
    regex: bool = False


class FinishLength(msgspec.Struct, tag="length", tag_field="type", frozen=True):
    """Finished at ``max_new_tokens`` or the context length; ``length``: the tokens generated."""

    length: int


class FinishAbort(msgspec.Struct, tag="abort", tag_field="type", omit_defaults=True, frozen=True):
    """Aborted (by the client, by validation, by an error); ``status_code`` is the HTTP status the
    client gets (None: the request just ends with this reason)."""

    message: str
    status_code: int | None = None


# Why a request finished. One tagged union from the scheduler to the HTTP answer, typed on the
# wire too (msgspec checks it when decoding). Its JSON form (``finish_reason_json``) is SGLang's
# ``meta_info["finish_reason"]``: {"type": "stop", "matched": ...}, {"type": "length", "length": N},
# {"type": "abort", "message": ..., "status_code": ...}.
FinishReason = Union[FinishStop, FinishLength, FinishAbort]


def finish_reason_json(reason: FinishReason | None) -> dict[str, Any] | None:
    """The JSON object clients see for ``reason`` (``type`` first, unset optional fields left out)."""
    return None if reason is None else msgspec.to_builtins(reason)


class TokenizedGenerateReqInput(msgspec.Struct, tag=True):
    rid: str
    input_text: str | None
    input_ids: list[int]
    sampling_params: dict[str, Any]
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    stream: bool = False


class AbortReq(msgspec.Struct, tag=True):
    rid: str = ""
    abort_all: bool = False


class FlushCacheReq(msgspec.Struct, tag=True):
    # Also return the device allocator's unused cached blocks (``torch.cuda.empty_cache()``;
    # nothing to return on a CPU). The KV pool is preallocated and stays.
    empty_cache: bool = False


class FlushCacheReqOutput(msgspec.Struct, tag=True):
    success: bool
    message: str = ""


class GetInternalStateReq(msgspec.Struct, tag=True):
    pass


class GetInternalStateReqOutput(msgspec.Struct, tag=True):
    state: dict[str, Any]


class SchedulerReady(msgspec.Struct, tag=True):
    """Sent once by the scheduler after the model is loaded."""

    max_total_num_tokens: int
    max_running_requests: int
    context_len: int
    vocab_size: int


class BatchTokenIDOut(msgspec.Struct, tag=True):
    """Per request: tokens produced since the previous message for that rid, and metadata."""

    rids: list[str]
    new_token_ids: list[list[int]]
    finished_reasons: list[FinishReason | None]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    cached_tokens: list[int]
    skip_special_tokens: list[bool]
    no_stop_trim: list[bool]
    # Logprob deltas (None when not requested). Each entry: (logprob, token_id).
    output_token_logprobs: list[list[tuple[float, int]] | None]
    output_top_logprobs: list[list[list[tuple[float, int]]] | None]
    # Prompt logprobs, sent once with the first message of a request.
    input_token_logprobs: list[list[tuple[float | None, int]] | None]
    input_top_logprobs: list[list[list[tuple[float, int]] | None] | None]
    # Per request; missing entries (outputs that carry no tokens) mean False.
    spaces_between_special_tokens: list[bool] = msgspec.field(default_factory=list)


class BatchStrOut(msgspec.Struct, tag=True):
    """Per request: the whole decoded output text so far (stop string trimmed at finish)."""

    rids: list[str]
    texts: list[str]
    new_token_ids: list[list[int]]
    finished_reasons: list[FinishReason | None]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    cached_tokens: list[int]
    output_token_logprobs: list[list[tuple[float, int]] | None]
    output_top_logprobs: list[list[list[tuple[float, int]]] | None]
    input_token_logprobs: list[list[tuple[float | None, int]] | None]
    input_top_logprobs: list[list[list[tuple[float, int]] | None] | None]


Message = Union[
    TokenizedGenerateReqInput,
    AbortReq,
    FlushCacheReq,
    FlushCacheReqOutput,
    GetInternalStateReq,
    GetInternalStateReqOutput,
    SchedulerReady,
    BatchTokenIDOut,
    BatchStrOut,
]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes) -> Message:
    return _decoder.decode(data)


# -- the native request (HTTP /generate, /v1 adapters, /run_program gens, Engine) ------------
@dataclass
class GenerateReqInput:
    """A native ``/generate`` request (SGLang's field names)."""

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: dict | list[dict] | None = None
    rid: str | list[str] | None = None
    return_logprob: bool | list[bool] = False
    logprob_start_len: int | list[int] | None = None
    top_logprobs_num: int | list[int] | None = None
    return_text_in_logprobs: bool = False
    stream: bool = False
    image_data: Any = None

    def is_batch(self) -> bool:
        if self.text is not None:
            return isinstance(self.text, list)
        return self.input_ids is not None and bool(self.input_ids) and isinstance(self.input_ids[0], list)

    def split(self) -> list["GenerateReqInput"]:
        """One single request per element of a batch request."""
        if not self.is_batch():
            return [self]
        # A batch: ``text`` is a list of prompts, or ``input_ids`` a list of id lists.
        batch_ids: Any = self.input_ids
        n = len(self.text if self.text is not None else batch_ids)

        def pick(v: Any, i: int) -> Any:
            return v[i] if isinstance(v, list) else v

        return [GenerateReqInput(
            text=self.text[i] if self.text is not None else None,
            input_ids=batch_ids[i] if self.text is None else None,
            sampling_params=pick(self.sampling_params, i),
            rid=pick(self.rid, i), return_logprob=pick(self.return_logprob, i),
            logprob_start_len=pick(self.logprob_start_len, i), top_logprobs_num=pick(self.top_logprobs_num, i),
            return_text_in_logprobs=self.return_text_in_logprobs, stream=self.stream) for i in range(n)]


def single_rid(s: GenerateReqInput) -> str | None:
    """The rid of a single request (``split()`` leaves one string or None per request)."""
    return cast("str | None", s.rid)


def input_chars(obj: GenerateReqInput) -> int:
    """Characters (or ids) of every prompt: what decides whether validation runs off the event loop."""
    if isinstance(obj.text, str):
        return len(obj.text)
    if isinstance(obj.text, list):
        return sum(len(t) for t in obj.text if isinstance(t, str))
    return len(obj.input_ids) if isinstance(obj.input_ids, list) else 0


def has_grammar(sp: Any) -> bool:
    """Whether any prompt's sampling params carry a constraint (checked off the event loop)."""
    dicts = sp if isinstance(sp, list) else [sp]
    return any(isinstance(d, dict) and any(d.get(k) is not None for k in ("regex", "json_schema", "choices", "stop_regex"))
               for d in dicts)
