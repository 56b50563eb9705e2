"""In-process backend over ``sglite.Engine`` (same dict shapes as ``/generate``).

The engine's streaming chunks carry INCREMENTAL text (deltas) while the HTTP
wire carries cumulative text; this backend re-accumulates them so that the
shared code in :class:`BaseBackend` sees one shape.
"""
from __future__ import annotations

import inspect
from typing import Any, Iterator, Optional, Union

from sglite.backend.base import BaseBackend

# /generate body field -> Engine.generate keyword.
_FIELD_TO_KWARG = {
    "text": "prompt",
    "input_ids": "input_ids",
    "sampling_params": "sampling_params",
    "return_logprob": "return_logprob",
    "logprob_start_len": "logprob_start_len",
    "top_logprobs_num": "top_logprobs_num",
    "return_text_in_logprobs": "return_text_in_logprobs",
    "image_data": "image_data",
    "stream": "stream",
}


class EngineBackend(BaseBackend):
    """Wrap an ``sglite.Engine`` (or anything with the same ``generate`` API)."""

    def __init__(self, engine: Any, stream_text_is_delta: bool = True) -> None:
        super().__init__()
        self.engine = engine
        self.stream_text_is_delta = stream_text_is_delta
        try:
            params = inspect.signature(engine.generate).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
            self._accepted = None if takes_any else set(params)
        except (TypeError, ValueError):
            self._accepted = None

    def _kwargs(self, payload: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        for field, value in payload.items():
            name = _FIELD_TO_KWARG.get(field, field)
            if self._accepted is not None and name not in self._accepted:
                if field in ("return_text_in_logprobs", "stream") and not value:
                    continue
                if field == "return_text_in_logprobs":
                    continue  # text in logprobs is a nicety; ids are what we rely on
                raise TypeError(f"this engine's generate() does not accept {name!r}")
            kwargs[name] = value
        return kwargs

    def _fetch_model_info(self) -> dict[str, Any]:
        return self.engine.get_model_info()

    def _generate_raw(self, payload: dict[str, Any]) -> Union[dict[str, Any], list[dict[str, Any]]]:
        body = dict(payload)
        body.pop("stream", None)
        return self.engine.generate(**self._kwargs(body))

    def _generate_raw_stream(self, payload: dict[str, Any]) -> Iterator[dict[str, Any]]:
        text = ""
        for chunk in self.engine.generate(**self._kwargs(dict(payload, stream=True))):
            if isinstance(chunk, dict) and "error" in chunk:
                err = chunk["error"]
                raise RuntimeError(str(err.get("message", err)) if isinstance(err, dict) else str(err))
            if self.stream_text_is_delta:
                text += chunk.get("text", "")
                chunk = dict(chunk, text=text)
            yield chunk

    def run_program(self, graph: Any, sampling_params: Optional[dict[str, Any]] = None,
                    stream: bool = False) -> Any:
        """Run a compiled graph in the engine: ``{"events": [...]}``, an event iterator
        (``stream``), or a list of results when ``graph`` is a list of graphs."""
        return self.engine.run_program(graph, sampling_params, stream=stream)

    def flush_cache(self) -> bool:
        result = self.engine.flush_cache()
        return True if result is None else bool(getattr(result, "success", result))

    def get_server_info(self) -> Optional[dict[str, Any]]:
        return self.engine.get_server_info()

    def cancel_threads(self, thread_ids: list[int]) -> None:
        """Abort the engine calls these threads wait on (Ctrl-C while a program runs)."""
        cancel = getattr(self.engine, "cancel_calls", None)
        if callable(cancel):
            cancel(thread_ids)

    def shutdown(self) -> None:
        """Shut the wrapped engine down."""
        stop = getattr(self.engine, "shutdown", None)
        if callable(stop):
            stop()
