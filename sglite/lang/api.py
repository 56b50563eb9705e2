"""The user-facing builders: function, gen, select, image, roles, backend helpers."""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

from sglite.global_config import global_config
from sglite.protocol.choices import ChoicesSamplingMethod, token_length_normalized
from sglite.lang.function import SglFunction
from sglite.lang.ir import (
    SglExpr, SglExprList, SglGen, SglImage, SglRoleBegin, SglRoleEnd, SglSelect, SglSeparateReasoning,
)
from sglite.protocol.sampling import SglSamplingParams, dtype_name, json_schema_to_str, validate_regex

Stop = Union[None, str, list[str]]


def function(func: Optional[Callable[..., Any]] = None, num_api_spec_tokens: Optional[int] = None):
    """Decorator: ``@function`` or ``@function(num_api_spec_tokens=N)`` -> SglFunction."""
    if func is not None:
        return SglFunction(func, num_api_spec_tokens=num_api_spec_tokens)

    def decorator(f: Callable[..., Any]) -> SglFunction:
        return SglFunction(f, num_api_spec_tokens=num_api_spec_tokens)

    return decorator


def Runtime(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - SGLang's name
    """A local server (``sglite.Runtime``); imported on call so the frontend stays light."""
    from sglite.backend.local_runtime import Runtime as _Runtime

    return _Runtime(*args, **kwargs)


def Engine(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - SGLang's name
    """An in-process engine (``sglite.Engine``); imported on call so the frontend stays light."""
    from sglite_runtime.entrypoints.engine import Engine as _Engine

    return _Engine(*args, **kwargs)


def gen(
    name: Optional[str] = None,
    max_tokens: Optional[int] = None,
    min_tokens: Optional[int] = None,
    n: Optional[int] = None,
    stop: Stop = None,
    stop_token_ids: Optional[list[int]] = None,
    stop_regex: Stop = None,
    temperature: Optional[float] = None,
    top_p: Optional[float] = None,
    top_k: Optional[int] = None,
    min_p: Optional[float] = None,
    frequency_penalty: Optional[float] = None,
    presence_penalty: Optional[float] = None,
    ignore_eos: Optional[bool] = None,
    return_logprob: Optional[bool] = None,
    logprob_start_len: Optional[int] = None,
    top_logprobs_num: Optional[int] = None,
    return_text_in_logprobs: Optional[bool] = None,
    dtype: Any = None,
    choices: Optional[list[str]] = None,
    choices_method: Optional[ChoicesSamplingMethod] = None,
    regex: Optional[str] = None,
    json_schema: Any = None,
    repetition_penalty: Optional[float] = None,
    seed: Optional[int] = None,
    ebnf: Optional[str] = None,
) -> SglExpr:
    """Generate into variable ``name``. ``None`` arguments inherit from ``run()``.

    Positional order is SGLang's (sglite's extras come last). ``n > 1`` stores a
    list of ``n`` samples and continues the text with the first. ``dtype``
    (int/float/bool/str) and ``regex``/``json_schema`` (str, dict or pydantic
    model class) constrain the output; non-empty ``choices`` turns this into a
    :func:`select`.
    """
    if choices:
        return select(name, choices, 0.0 if temperature is None else temperature,
                      choices_method or token_length_normalized)
    validate_regex(regex)
    for pattern in [stop_regex] if isinstance(stop_regex, str) else (stop_regex or []):
        validate_regex(pattern)
    if n is not None and n < 1:
        raise ValueError("n must be >= 1")
    params = SglSamplingParams(
        max_new_tokens=max_tokens, min_new_tokens=min_tokens, n=n, stop=stop,
        stop_token_ids=stop_token_ids, stop_regex=stop_regex, temperature=temperature, top_p=top_p,
        top_k=top_k, min_p=min_p, frequency_penalty=frequency_penalty, presence_penalty=presence_penalty,
        repetition_penalty=repetition_penalty, ignore_eos=ignore_eos, seed=seed,
        return_logprob=return_logprob, logprob_start_len=logprob_start_len,
        top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs,
        dtype=dtype_name(dtype), regex=regex, json_schema=json_schema_to_str(json_schema), ebnf=ebnf,
    )
    return SglGen(name, params)


def _typed(dtype: type, name: Optional[str], max_tokens: Optional[int], n: Optional[int], stop: Stop,
           stop_token_ids: Optional[list[int]], stop_regex: Stop, temperature: Optional[float],
           top_p: Optional[float], top_k: Optional[int], min_p: Optional[float],
           frequency_penalty: Optional[float], presence_penalty: Optional[float],
           ignore_eos: Optional[bool], return_logprob: Optional[bool], logprob_start_len: Optional[int],
           top_logprobs_num: Optional[int], return_text_in_logprobs: Optional[bool],
           seed: Optional[int]) -> SglExpr:
    return gen(name, max_tokens, None, n, stop, stop_token_ids, stop_regex, temperature, top_p, top_k,
               min_p, frequency_penalty, presence_penalty, ignore_eos, return_logprob, logprob_start_len,
               top_logprobs_num, return_text_in_logprobs, dtype=dtype, seed=seed)


def gen_int(name: Optional[str] = None, max_tokens: Optional[int] = None, n: Optional[int] = None,
            stop: Stop = None, stop_token_ids: Optional[list[int]] = None, stop_regex: Stop = None,
            temperature: Optional[float] = None, top_p: Optional[float] = None,
            top_k: Optional[int] = None, min_p: Optional[float] = None,
            frequency_penalty: Optional[float] = None, presence_penalty: Optional[float] = None,
            ignore_eos: Optional[bool] = None, return_logprob: Optional[bool] = None,
            logprob_start_len: Optional[int] = None, top_logprobs_num: Optional[int] = None,
            return_text_in_logprobs: Optional[bool] = None, seed: Optional[int] = None) -> SglExpr:
    """``gen`` constrained to an integer that fits in int64 (a JSON number)."""
    return _typed(int, name, max_tokens, n, stop, stop_token_ids, stop_regex, temperature, top_p, top_k,
                  min_p, frequency_penalty, presence_penalty, ignore_eos, return_logprob,
                  logprob_start_len, top_logprobs_num, return_text_in_logprobs, seed)


def gen_string(name: Optional[str] = None, max_tokens: Optional[int] = None, n: Optional[int] = None,
               stop: Stop = None, stop_token_ids: Optional[list[int]] = None, stop_regex: Stop = None,
               temperature: Optional[float] = None, top_p: Optional[float] = None,
               top_k: Optional[int] = None, min_p: Optional[float] = None,
               frequency_penalty: Optional[float] = None, presence_penalty: Optional[float] = None,
               ignore_eos: Optional[bool] = None, return_logprob: Optional[bool] = None,
               logprob_start_len: Optional[int] = None, top_logprobs_num: Optional[int] = None,
               return_text_in_logprobs: Optional[bool] = None, seed: Optional[int] = None) -> SglExpr:
    """``gen`` constrained to a JSON string literal (quotes included; escapes, no raw control chars)."""
    return _typed(str, name, max_tokens, n, stop, stop_token_ids, stop_regex, temperature, top_p, top_k,
                  min_p, frequency_penalty, presence_penalty, ignore_eos, return_logprob,
                  logprob_start_len, top_logprobs_num, return_text_in_logprobs, seed)


def select(name: Optional[str] = None, choices: Optional[list[str]] = None, temperature: float = 0.0,
           choices_method: ChoicesSamplingMethod = token_length_normalized) -> SglSelect:
    """Append the best of ``choices``, scored on each choice's own tokens."""
    if not choices:
        raise ValueError("select needs a non-empty list of choices")
    if any(not isinstance(c, str) or c == "" for c in choices):
        raise ValueError("select choices must be non-empty strings")
    if temperature > 1e-5:
        raise ValueError("select supports only temperature 0")
    return SglSelect(name, list(choices), temperature, choices_method)


def image(expr: Any) -> SglImage:
    """An image (path, bytes, base64 string or PIL image) for a vision model."""
    return SglImage(expr)


def video(path: str, num_frames: int) -> SglExpr:
    """Refused: sglite's runtime has no video input (SGLang's ``sgl.video``)."""
    raise NotImplementedError("sglite.video is not supported: the runtime takes no video input; "
                              "pass sampled frames as sglite.image(...) to a vision model instead")


def separate_reasoning(expr: Any = None, model_type: Optional[str] = None) -> SglExprList:
    """Run ``expr``, then move each of its gens' reasoning (``<think>...</think>``) into
    ``<name>_reasoning_content``; ``<name>`` and the text keep only the answer.

    ``model_type`` picks the markers as SGLang's reasoning parser does ("qwen3" by
    default, "deepseek-r1" where the reasoning has no opening tag, "kimi", ...).
    """
    from sglite.lang.reasoning import split_reasoning

    split_reasoning("", model_type)  # an unknown model_type fails here, at build time
    if expr is None:
        return SglExprList([])
    return expr + SglSeparateReasoning(model_type, expr)


def _role(role: str, expr: Any = None) -> SglExprList:
    if expr is None:
        return SglExprList([SglRoleBegin(role), SglRoleEnd(role)])
    return SglExprList([SglRoleBegin(role)]) + expr + SglRoleEnd(role)


def system(expr: Any = None) -> SglExprList:
    """``expr`` as a system message."""
    return _role("system", expr)


def user(expr: Any = None) -> SglExprList:
    """``expr`` as a user message."""
    return _role("user", expr)


def assistant(expr: Any = None) -> SglExprList:
    """``expr`` as an assistant message."""
    return _role("assistant", expr)


def system_begin() -> SglRoleBegin:
    return SglRoleBegin("system")


def system_end() -> SglRoleEnd:
    return SglRoleEnd("system")


def user_begin() -> SglRoleBegin:
    return SglRoleBegin("user")


def user_end() -> SglRoleEnd:
    return SglRoleEnd("user")


def assistant_begin() -> SglRoleBegin:
    return SglRoleBegin("assistant")


def assistant_end() -> SglRoleEnd:
    return SglRoleEnd("assistant")


def set_default_backend(backend: Any) -> None:
    """Use ``backend`` (a backend, an ``sglite.Engine`` or an ``sglite.Runtime``) by default."""
    from sglite.backend import as_backend

    global_config.default_backend = as_backend(backend) if backend is not None else None


def _backend_or_default(backend: Any) -> Any:
    from sglite.backend import as_backend

    backend = backend if backend is not None else global_config.default_backend
    return None if backend is None else as_backend(backend)


def flush_cache(backend: Any = None) -> bool:
    """Flush the runtime's prefix cache; False when there is no backend."""
    backend = _backend_or_default(backend)
    return False if backend is None else backend.flush_cache()


def get_server_info(backend: Any = None) -> Optional[dict[str, Any]]:
    """The runtime's server info; None when there is no backend."""
    backend = _backend_or_default(backend)
    return None if backend is None else backend.get_server_info()
