"""Shape checks of a generate request: the per-request fields outside ``sampling_params``.

The TokenizerManager runs these for every entry (HTTP ``/generate``, ``/v1/*``, ``/run_program``
gen nodes, ``sglite.Engine``) before it tokenizes, registers or sends anything, so the HTTP
handlers keep only HTTP concerns. Types are strict (``"yes"`` is not a boolean, ``1.0`` is not an
integer) because JSON clients send typos, not intentions. Every problem is a ``ValueError``
whose message names the field (HTTP 400, ``ValueError`` on the Engine).
"""

from __future__ import annotations

from typing import Any

from sglite_runtime.sampling.sampling_params import check_unicode

# SGLang's bound on top logprobs per position (the OpenAI API allows 20 too).
MAX_TOP_LOGPROBS = 20
# Samples per prompt.
MAX_N = 64

_PER_PROMPT_FIELDS = ("sampling_params", "rid", "return_logprob", "logprob_start_len", "top_logprobs_num")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _show(v: Any) -> str:
    text = repr(v)
    return (text[:57] + "...") if len(text) > 60 else text


def check_generate_input(obj: Any) -> int:
    """Validate the request-level fields of a ``GenerateReqInput``; return its prompt count.

    Raises:
        ValueError: naming the first offending field.
    """
    if getattr(obj, "image_data", None) is not None:
        raise ValueError("Image input is not supported by this server.")
    if obj.text is None and obj.input_ids is None:
        raise ValueError("Either text or input_ids must be provided.")
    if obj.text is not None and obj.input_ids is not None:
        raise ValueError("Send either text or input_ids, not both.")
    if obj.text is not None:
        n, is_batch = _check_text(obj.text)
    else:
        n, is_batch = _check_input_ids(obj.input_ids)
    for name in _PER_PROMPT_FIELDS:
        v = getattr(obj, name)
        if isinstance(v, list):
            if not is_batch or len(v) != n:
                raise ValueError(f"{name} is a list of {len(v)} but the request has {n} prompt(s).")
    for name in ("stream", "return_text_in_logprobs"):
        if not isinstance(getattr(obj, name), bool):
            raise ValueError(f"{name} must be a boolean, got {_show(getattr(obj, name))}.")
    for v in _as_list(obj.return_logprob):
        if not isinstance(v, bool):
            raise ValueError(f"return_logprob must be a boolean, got {_show(v)}.")
    for v in _as_list(obj.top_logprobs_num):
        if v is not None and (not _is_int(v) or not 0 <= v <= MAX_TOP_LOGPROBS):
            raise ValueError(f"top_logprobs_num must be an integer in [0, {MAX_TOP_LOGPROBS}], got {_show(v)}.")
    for v in _as_list(obj.logprob_start_len):
        if v is not None and (not _is_int(v) or not -1 <= v < 2**63):
            raise ValueError(f"logprob_start_len must be -1 or a non-negative integer, got {_show(v)}.")
    for v in _as_list(obj.sampling_params):
        if v is not None and not isinstance(v, dict):
            raise ValueError(f"sampling_params must be an object (or a list of objects), got {_show(v)}.")
    rids = [r for r in _as_list(obj.rid) if r is not None]
    for r in rids:
        if not isinstance(r, str) or not r:
            raise ValueError(f"rid must be a non-empty string, got {_show(r)}.")
        check_unicode(r, "rid")
    if is_batch and n > 1 and isinstance(obj.rid, str):
        raise ValueError("rid must be a list with one id per prompt for a batch request.")
    if len(set(rids)) != len(rids):
        raise ValueError("Request ids in a batch must be unique.")
    return n


def _check_text(text: Any) -> tuple[int, bool]:
    if isinstance(text, str):
        check_unicode(text, "text")
        return 1, False
    if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
        raise ValueError(f"text must be a string or a list of strings, got {_show(text)}.")
    if not text:
        raise ValueError("The batch is empty.")
    for t in text:
        check_unicode(t, "text")
    return len(text), True


def _check_input_ids(ids: Any) -> tuple[int, bool]:
    if not isinstance(ids, list):
        raise ValueError(f"input_ids must be a list of integers (or of lists), got {_show(ids)}.")
    if ids and isinstance(ids[0], list):
        if not all(isinstance(row, list) and all(_is_int(t) for t in row) for row in ids):
            raise ValueError("input_ids must be a list of integer lists for a batch.")
        return len(ids), True
    if not all(_is_int(t) for t in ids):
        raise ValueError("input_ids must be a flat list of integers.")
    return 1, False


def _as_list(v: Any) -> list:
    return v if isinstance(v, list) else [v]
