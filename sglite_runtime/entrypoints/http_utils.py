"""Small HTTP helpers shared by the native and OpenAI routes: JSON, errors, SSE framing."""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.responses import JSONResponse, Response

_ERROR_TYPES = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 413: "RequestEntityTooLarge",
                499: "ClientClosedRequest", 500: "InternalServerError", 503: "ServiceUnavailableError"}


def _finite(obj: Any) -> Any:
    # OpenAI clients expect plain JSON numbers; -inf logprobs (masked tokens) become -9999.0.
    if isinstance(obj, float):
        if math.isnan(obj):
            return None
        if math.isinf(obj):
            return -9999.0 if obj < 0 else 9999.0
        return obj
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """Strict JSON (no NaN/Infinity tokens), compact."""
    try:
        return json.dumps(obj, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return json.dumps(_finite(obj), allow_nan=False, separators=(",", ":"), ensure_ascii=False)


def json_response(obj: Any, status_code: int = 200) -> Response:
    return Response(dumps(obj), status_code=status_code, media_type="application/json")


def is_openai_path(path: str) -> bool:
    return path.startswith("/v1/")


def error_body(message: str, status_code: int, openai_style: bool, param: str | None = None) -> dict:
    """OpenAI's ``{"error": {message, type, param, code}}`` or SGLang's ``{"error": {message}}``."""
    if openai_style:
        return {"object": "error", "error": {"message": message, "type": _ERROR_TYPES.get(status_code, "APIError"),
                                             "param": param, "code": status_code}}
    return {"error": {"message": message, "code": status_code}}


def error_response(message: str, status_code: int = 400, path: str = "/v1/", param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status_code, is_openai_path(path), param), status_code=status_code)


def sse(obj: Any) -> str:
    return f"data: {dumps(obj)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def abort_status(meta: dict) -> tuple[int, str] | None:
    """(status, message) when the runtime rejected a request after scheduling it (e.g. a bad grammar)."""
    fr = meta.get("finish_reason") or {}
    if isinstance(fr, dict) and fr.get("type") == "abort" and fr.get("status_code"):
        return int(fr["status_code"]), str(fr.get("message") or "The request was aborted.")
    return None
