"""A backend over any OpenAI-compatible API (OpenAI, vLLM, SGLang, sglite's ``/v1``).

Completion models get the program's text as ``/v1/completions`` prompts; chat models get
its finished messages on ``/v1/chat/completions`` (a gen must then open an assistant
message, as in SGLang). ``select`` is scored from prompt logprobs (``echo`` with
``logprobs`` and ``max_tokens=0`` on completions) and refused where the server returns
none. Constraints go in the server's structured-output fields; forks are plain
concurrent requests (there is no prefix cache to commit).
"""
from __future__ import annotations

import json
import logging
from typing import Any, Iterator, Optional, Union

from sglite.backend.base import BaseBackend, GenMeta, GenText
from sglite.protocol.chat_template import ChatTemplate
from sglite.protocol.choices import ChoicesDecision, ChoicesSamplingMethod
from sglite.protocol.sampling import _DTYPE_TABLE, SglSamplingParams, _as_list

logger = logging.getLogger(__name__)

# Where each server family takes a regex / a JSON schema (extra_body fields).
STRUCTURED_FIELDS = {"sglang": ("regex", "json_schema"), "vllm": ("guided_regex", "guided_json")}


class OpenAI(BaseBackend):
    """``sglite.OpenAI("model", base_url=..., api_key=...)``: SGLang's OpenAI backend.

    ``is_chat_model`` defaults to True unless the model name ends in "instruct" (SGLang's
    rule). ``structured_outputs`` names the server's constraint fields: "sglang" (also
    sglite), "vllm", or "openai" (JSON schemas only, as ``response_format``; regex refused).
    ``chat_template`` renders roles for completion models (default: none, plain text).
    """

    def __init__(self, model_name: str, base_url: Optional[str] = None, api_key: Optional[str] = None,
                 is_chat_model: Optional[bool] = None, chat_template: Optional[ChatTemplate] = None,
                 structured_outputs: str = "sglang", **client_kwargs: Any) -> None:
        super().__init__()
        try:
            import openai  # the real SDK; imported here so `import sglite` stays light
        except ImportError as e:
            raise ImportError("sglite.OpenAI needs the openai package: pip install openai") from e

        if structured_outputs not in (*STRUCTURED_FIELDS, "openai"):
            raise ValueError(f"structured_outputs must be 'sglang', 'vllm' or 'openai', got {structured_outputs!r}")
        self.model_name = model_name
        self.is_chat_model = (not model_name.endswith("instruct")) if is_chat_model is None else is_chat_model
        self.structured_outputs = structured_outputs
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "EMPTY", **client_kwargs)
        self._openai = openai
        self._chat_template = chat_template or ChatTemplate()

    # -- BaseBackend --------------------------------------------------------
    def _fetch_model_info(self) -> dict[str, Any]:
        return {"model_path": self.model_name}

    def supports_images(self) -> bool:
        return self.is_chat_model

    def flush_cache(self) -> bool:
        return False  # no such call on an OpenAI-compatible API

    def get_server_info(self) -> Optional[dict[str, Any]]:
        return {"model": self.model_name, "base_url": str(self.client.base_url)}

    def commit_prefix(self, state_text: str) -> None:
        """Nothing to commit: forks are independent concurrent requests."""

    # -- request building ---------------------------------------------------
    def _kwargs(self, params: SglSamplingParams, chat: bool) -> dict[str, Any]:
        kw: dict[str, Any] = {"model": self.model_name, "max_tokens": params.max_new_tokens,
                              "n": params.n or 1, "temperature": params.temperature, "top_p": params.top_p,
                              "frequency_penalty": params.frequency_penalty,
                              "presence_penalty": params.presence_penalty}
        stop = _as_list(params.stop)
        if stop:
            kw["stop"] = stop
        if params.seed is not None:
            kw["seed"] = params.seed
        extra: dict[str, Any] = {}
        if params.top_k not in (None, -1):
            extra["top_k"] = params.top_k
        if params.min_p:
            extra["min_p"] = params.min_p
        if params.min_new_tokens:
            extra["min_tokens"] = params.min_new_tokens
        if params.ignore_eos:
            extra["ignore_eos"] = True
        if params.stop_token_ids:
            extra["stop_token_ids"] = _as_list(params.stop_token_ids)
        regex = _DTYPE_TABLE[params.dtype] if params.dtype else params.regex
        if regex is not None and params.json_schema is not None:
            raise ValueError("a gen may use only one of regex/dtype and json_schema")
        if self.structured_outputs == "openai":
            if regex is not None:
                raise ValueError("regex/dtype constraints are not supported by the OpenAI API; "
                                 "use json_schema, or structured_outputs='sglang'/'vllm' for such servers")
            if params.json_schema is not None:
                if not chat:
                    raise ValueError("the OpenAI API takes json_schema on chat models only")
                kw["response_format"] = {"type": "json_schema", "json_schema": {
                    "name": "output", "schema": json.loads(params.json_schema)}}
        else:
            regex_field, schema_field = STRUCTURED_FIELDS[self.structured_outputs]
            if regex is not None:
                extra[regex_field] = regex
            if params.json_schema is not None:
                extra[schema_field] = params.json_schema
        if extra:
            kw["extra_body"] = extra
        return kw

    def _call(self, fn: Any, **kw: Any) -> Any:
        try:
            return fn(**kw)
        except self._openai.BadRequestError as e:
            raise ValueError(f"{self.model_name}: {e}") from None
        except self._openai.APIError as e:
            raise RuntimeError(f"{self.model_name}: {e}") from None

    @staticmethod
    def _meta(resp: Any, choice: Any) -> dict[str, Any]:
        usage = getattr(resp, "usage", None)
        return {"id": resp.id, "finish_reason": choice.finish_reason,
                "prompt_tokens": getattr(usage, "prompt_tokens", None),
                "completion_tokens": getattr(usage, "completion_tokens", None)}

    # -- generation ---------------------------------------------------------
    def generate(self, state_text: Union[str, list[dict[str, Any]]], sampling_params: SglSamplingParams,
                 image_data: Optional[list[str]] = None) -> tuple[GenText, GenMeta]:
        """``state_text`` is the prompt text, or the messages list for a chat model."""
        chat = isinstance(state_text, list)
        kw = self._kwargs(sampling_params, chat)
        if chat:
            resp = self._call(self.client.chat.completions.create, messages=state_text, **kw)
            texts = [c.message.content or "" for c in resp.choices]
        else:
            resp = self._call(self.client.completions.create, prompt=state_text, **kw)
            texts = [c.text for c in resp.choices]
        metas = [self._meta(resp, c) for c in resp.choices]
        if (sampling_params.n or 1) > 1:
            return texts, metas
        return texts[0], metas[0]

    def generate_stream(self, state_text: Union[str, list[dict[str, Any]]], sampling_params: SglSamplingParams,
                        image_data: Optional[list[str]] = None) -> Iterator[tuple[str, dict[str, Any]]]:
        chat = isinstance(state_text, list)
        kw = self._kwargs(sampling_params, chat)
        if chat:
            stream = self._call(self.client.chat.completions.create, messages=state_text, stream=True, **kw)
        else:
            stream = self._call(self.client.completions.create, prompt=state_text, stream=True, **kw)
        count = 0
        for chunk in stream:
            if not chunk.choices:
                continue
            c = chunk.choices[0]
            delta = (c.delta.content or "") if chat else (c.text or "")
            count += 1 if delta else 0
            yield delta, {"id": chunk.id, "finish_reason": c.finish_reason, "completion_tokens": count}

    # -- select -------------------------------------------------------------
    def _prompt_logprobs(self, text: str) -> tuple[list[Optional[float]], list[str], list[int]]:
        resp = self._call(self.client.completions.create, model=self.model_name, prompt=text, max_tokens=0,
                          echo=True, logprobs=0, temperature=0)
        lp = resp.choices[0].logprobs if resp.choices else None
        if lp is None or not getattr(lp, "token_logprobs", None):
            raise ValueError(f"select cannot be scored on {self.model_name}: the server returned no prompt "
                             "logprobs (it needs /v1/completions with echo=True and logprobs)")
        return list(lp.token_logprobs), list(lp.tokens), list(lp.text_offset)

    def select(self, state_text: Any, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod, image_data: Optional[list[str]] = None) -> ChoicesDecision:
        """Score each choice's own tokens from the server's prompt logprobs, then pick."""
        if self.is_chat_model or not isinstance(state_text, str):
            raise ValueError(f"select cannot be scored on the chat model {self.model_name}: chat APIs return "
                             "no prompt logprobs; use a completion model (is_chat_model=False) whose server "
                             "returns echo logprobs, or gen(choices=...) on sglite/SGLang's RuntimeEndpoint")
        own: list[list[list[Any]]] = []
        for choice in choices:
            lps, toks, offsets = self._prompt_logprobs(state_text + choice)
            # A token belongs to the choice when it ends after the context does.
            own.append([[lp, None, t] for lp, t, off in zip(lps, toks, offsets)
                        if off + len(t) > len(state_text)])
        normalized = [sum(x[0] or 0.0 for x in row) / max(1, len(row)) for row in own]
        uncond = None
        if getattr(choices_method, "requires_unconditional_logprobs", False):
            uncond = [[[lp, None, t] for lp, t in zip(*self._prompt_logprobs(c)[:2])] for c in choices]
        decision = choices_method(choices=choices, normalized_prompt_logprobs=normalized,
                                  input_token_logprobs=own, output_token_logprobs=[[] for _ in choices],
                                  unconditional_token_logprobs=uncond)
        decision.meta_info.setdefault("normalized_prompt_logprobs", normalized)
        decision.meta_info.setdefault("input_token_logprobs", own)
        return decision
