"""The backend interface the interpreter talks to, built on SGLang's /generate contract.

A concrete backend implements only the transport: ``_generate_raw(payload)``
(one ``/generate`` body in, the response dict or list out) and
``_generate_raw_stream(payload)`` (chunks whose ``text`` is CUMULATIVE, as on
the HTTP wire). Everything else — gen, streaming deltas, prefix commits, choice
scoring — is shared here so that HTTP and in-process engines behave the same.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, Optional, Union

from sglite.global_config import global_config
from sglite.protocol.chat_template import ChatTemplate
from sglite.protocol.choices import ChoicesDecision, ChoicesSamplingMethod
from sglite.protocol.sampling import SglSamplingParams

logger = logging.getLogger(__name__)

GenText = Union[str, list[str]]
GenMeta = Union[dict[str, Any], list[dict[str, Any]]]


class BaseBackend:
    """Abstract backend. Subclasses provide the transport and server calls."""

    def __init__(self) -> None:
        self._model_info: Optional[dict[str, Any]] = None
        self._chat_template: Optional[ChatTemplate] = None

    # -- transport: subclasses implement ----------------------------------
    def _generate_raw(self, payload: dict[str, Any]) -> Union[dict[str, Any], list[dict[str, Any]]]:
        """Run one ``/generate`` request body; return its JSON response."""
        raise NotImplementedError

    def _generate_raw_stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Run one streaming ``/generate``; yield chunks with cumulative ``text``."""
        raise NotImplementedError

    def _fetch_model_info(self) -> dict[str, Any]:
        raise NotImplementedError

    def flush_cache(self) -> bool:
        """Drop the runtime's prefix cache; True on success."""
        raise NotImplementedError

    def get_server_info(self) -> Optional[dict[str, Any]]:
        """The runtime's server args and internal state."""
        raise NotImplementedError

    # -- model info ---------------------------------------------------------
    def get_model_info(self) -> dict[str, Any]:
        """``/get_model_info`` fields (``model_path``, ``chat_template``, ...), cached."""
        if self._model_info is None:
            self._model_info = dict(self._fetch_model_info() or {})
        return self._model_info

    @property
    def chat_template(self) -> ChatTemplate:
        """Role prefixes/suffixes rendered from the model's own chat template."""
        if self._chat_template is None:
            self._chat_template = ChatTemplate.from_model_info(self.get_model_info())
        return self._chat_template

    def supports_images(self) -> bool:
        info = self.get_model_info()
        return bool(info.get("has_image_understanding") or info.get("is_multimodal") or info.get("image_token"))

    # -- generation ---------------------------------------------------------
    @staticmethod
    def _payload(text: Any, params: SglSamplingParams, image_data: Optional[list[str]],
                 stream: bool = False) -> dict[str, Any]:
        sp, top = params.to_srt_kwargs(global_config.skip_special_tokens_in_output,
                                       global_config.spaces_between_special_tokens_in_out)
        payload: dict[str, Any] = {"text": text, "sampling_params": sp, **top, "stream": stream}
        if image_data:
            payload["image_data"] = image_data[0] if len(image_data) == 1 else list(image_data)
        return payload

    def generate(self, state_text: str, sampling_params: SglSamplingParams,
                 image_data: Optional[list[str]] = None) -> tuple[GenText, GenMeta]:
        """Continue ``state_text``; return ``(text, meta_info)``.

        With ``n > 1`` both are lists of ``n`` (one per sample).
        """
        resp = self._generate_raw(self._payload(state_text, sampling_params, image_data))
        n = sampling_params.n or 1
        if isinstance(resp, list):
            if n == 1 and len(resp) == 1:
                return resp[0]["text"], resp[0].get("meta_info", {})
            return [r["text"] for r in resp], [r.get("meta_info", {}) for r in resp]
        if n > 1:
            # A runtime that answers n>1 with one object: keep the contract (a list).
            return [resp["text"]], [resp.get("meta_info", {})]
        return resp["text"], resp.get("meta_info", {})

    def generate_stream(self, state_text: str, sampling_params: SglSamplingParams,
                        image_data: Optional[list[str]] = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """Yield ``(delta_text, meta_info)`` per chunk.

        ``meta_info`` carries this chunk's own ``output_token_logprobs`` (incremental,
        even if the runtime sent them cumulatively) and the cumulative counters.
        """
        payload = self._payload(state_text, sampling_params, image_data, stream=True)
        prev, seen = "", 0
        for chunk in self._generate_raw_stream(payload):
            text = chunk.get("text", "")
            if not text.startswith(prev):
                # Never retract text already handed out; just continue from its end.
                logger.debug("stream text is not an extension of the previous chunk")
            delta = text[len(prev):] if len(text) > len(prev) else ""
            prev = text if len(text) >= len(prev) else prev
            meta = dict(chunk.get("meta_info", {}))
            lps = meta.get("output_token_logprobs")
            if lps is not None:
                total = meta.get("output_token_logprobs_length", meta.get("completion_tokens"))
                # Cumulative logprobs repeat what we already delivered: keep the new tail.
                if seen > 0 and total is not None and len(lps) == total and total > seen:
                    lps = lps[seen:]
                elif seen > 0 and total is not None and len(lps) == total == seen:
                    lps = []
                meta["output_token_logprobs"] = lps
                seen += len(lps)
            yield delta, meta

    def commit_prefix(self, state_text: str) -> None:
        """Prefill ``state_text`` (``max_new_tokens=0``) so that forks hit the cache."""
        if not state_text:
            return  # an empty prefill is an error on the runtime (SGLang #2755)
        self._generate_raw({"text": state_text, "sampling_params": {"max_new_tokens": 0}})

    def select(self, state_text: str, choices: list[str], temperature: float,
               choices_method: ChoicesSamplingMethod,
               image_data: Optional[list[str]] = None) -> ChoicesDecision:
        """Score each choice's own tokens after ``state_text`` and pick one."""
        from sglite.backend.select_scoring import score_choices

        return score_choices(self, state_text, choices, temperature, choices_method, image_data)
