"""Pydantic request models of the HTTP API (OpenAI ``/v1/*`` and the native routes).

Only the request side is modelled: responses are plain dicts built in ``openai_api.py``.
Unknown request fields are ignored (OpenAI clients send ``user``, ``metadata``, …); fields we
cannot honour but that change the meaning of a request (``tools``) are rejected explicitly
in the handlers, never silently dropped.

The ``/v1`` models are strict (``STRICT``), like ``/generate``: ``"max_tokens": "5"`` or
``"stream": "yes"`` is a 400 naming the field, never a silent coercion (an integer is still a
valid float: ``"temperature": 0``).
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationInfo, field_validator

STRICT = ConfigDict(strict=True)


class StreamOptions(BaseModel):
    model_config = STRICT

    include_usage: bool = False


class SGLangExtras(BaseModel):
    """SGLang's "SRT-only" sampling fields, accepted on both OpenAI routes."""

    model_config = STRICT

    top_k: int = -1
    min_p: float = 0.0
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    regex: str | None = None
    json_schema: str | dict[str, Any] | None = None
    ebnf: str | None = None
    # vLLM's names for the same constraints (guided_grammar is EBNF here).
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    stop_regex: str | list[str] | None = None
    rid: str | None = None


class CompletionRequest(SGLangExtras):
    """``POST /v1/completions``."""

    model: str | None = None
    # Strict: pydantic would read ``[true]`` as token id 1.
    prompt: Union[str, list[str], list[StrictInt], list[list[StrictInt]]]
    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = None
    echo: bool = False
    stop: str | list[str] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[str, float] | None = None
    best_of: int | None = None
    suffix: str | None = None
    user: str | None = None  # OpenAI's end-user id (abuse monitoring): it changes no output; unused
    response_format: ResponseFormat | None = None  # vLLM accepts it here too
    tools: list[Any] | None = None  # refused by name: completions have no tool calling


class ChatMessage(BaseModel):
    model_config = STRICT

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None  # a previous turn's thinking; not sent to the template


class JsonSchemaFormat(BaseModel):
    """OpenAI's ``response_format.json_schema``. The output is always constrained to ``schema``,
    so ``strict`` true (what the openai SDK's ``parse()`` sends), false or absent all get exactly
    what ``strict: true`` promises. ``name`` and ``description`` tell OpenAI's model what the
    format is for; they are not shown to the model here (the schema alone constrains it)."""

    model_config = ConfigDict(strict=True, populate_by_name=True)

    name: str = "schema"
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None
    description: str | None = None


class ResponseFormat(BaseModel):
    model_config = STRICT

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class ChatCompletionRequest(SGLangExtras):
    """``POST /v1/chat/completions``."""

    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    stop: str | list[str] | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    # Legacy function calling: refused with a 400 naming it (use tools).
    functions: list[dict[str, Any]] | None = None
    function_call: str | dict[str, Any] | None = None
    # SGLang: put <think>...</think> in reasoning_content (default on with --reasoning-parser).
    separate_reasoning: bool | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    user: str | None = None  # OpenAI's end-user id (abuse monitoring): it changes no output; unused


class TokenizeRequest(BaseModel):
    """``POST /tokenize``: a prompt, or chat messages rendered through the template."""

    model_config = STRICT

    model: str | None = None
    prompt: str | None = None
    text: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(BaseModel):
    """``POST /detokenize``."""

    model: str | None = None
    tokens: list[StrictInt]  # [true] is not token 1


class GenerateRequest(BaseModel):
    """Native ``POST /generate`` (SGLang's contract, see frontend-spec §5).

    Any other field (SGLang's ``lora_path``, ``custom_logit_processor``, ``return_hidden_states``…)
    is a 400 naming it: each would change the answer, so it is never silently dropped.
    """

    model_config = {"extra": "forbid"}

    # Strict types (no coercion: "yes" is not true, 1.0 is not an integer): the TokenizerManager
    # validates the same fields strictly for every entry, and must see what the client sent.
    text: StrictStr | list[StrictStr] | None = None
    input_ids: list[StrictInt] | list[list[StrictInt]] | None = None
    sampling_params: dict[str, Any] | list[dict[str, Any]] | None = None
    rid: StrictStr | list[StrictStr] | None = None
    return_logprob: StrictBool | list[StrictBool] = False
    logprob_start_len: StrictInt | list[StrictInt] | None = None
    top_logprobs_num: StrictInt | list[StrictInt] | None = None
    return_text_in_logprobs: StrictBool = False
    stream: StrictBool = False
    image_data: Any = None
    # sglang-router forwards SGLang's GenerateReqInput with these fields set to their defaults.
    # One model per server, so `model` has nothing to choose; the flags are accepted only at the
    # value sglite implements, and any other value is a 400 naming the field.
    model: StrictStr | None = None
    log_metrics: StrictBool = True
    return_hidden_states: StrictBool = False
    return_entropy: StrictBool = False
    return_bytes: StrictBool = False
    background: StrictBool = False
    no_logs: StrictBool = False

    @field_validator("log_metrics", "return_hidden_states", "return_entropy", "return_bytes",
                     "background", "no_logs")
    @classmethod
    def _only_the_implemented_value(cls, v: bool, info: ValidationInfo) -> bool:
        assert info.field_name is not None  # a field validator always has its field
        if v != cls.model_fields[info.field_name].default:
            raise ValueError(f"{info.field_name}={str(v).lower()} is not supported by this server")
        return v


class AbortRequest(BaseModel):
    rid: StrictStr = ""
    abort_all: StrictBool = False  # "yes" must not abort everyone


class FlushCacheRequest(BaseModel):
    """``POST /flush_cache`` (the body is optional; GET has none)."""

    # Also ``torch.cuda.empty_cache()`` after the flush (a no-op on a CPU). Strict: "no" is not false.
    empty_cache: StrictBool | None = None
