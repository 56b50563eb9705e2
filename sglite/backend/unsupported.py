"""SGLang's vendor backends that sglite does not ship, refused with the alternative to use.

They exist as names so that ``sgl.Anthropic(...)`` in a ported program fails at the
line that uses it with a message, not with an ``AttributeError`` at import.
"""
from __future__ import annotations

from typing import Any

_ALTERNATIVE = ("use sglite.OpenAI(model, base_url=..., api_key=...) against an OpenAI-compatible "
                "endpoint for it (e.g. a LiteLLM proxy), or sglite.RuntimeEndpoint for an sglite/SGLang server")


class _Unsupported:
    vendor = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(f"sglite.{type(self).__name__} (the {self.vendor} backend) is not "
                                  f"supported: {_ALTERNATIVE}")


class Anthropic(_Unsupported):
    """Refused: Anthropic's messages API (no logprobs, no regex)."""

    vendor = "Anthropic"


class LiteLLM(_Unsupported):
    """Refused: the litellm client library."""

    vendor = "LiteLLM"


class VertexAI(_Unsupported):
    """Refused: Google's Vertex AI SDK."""

    vendor = "Vertex AI"


class Crusoe(_Unsupported):
    """Refused: Crusoe's hosted API."""

    vendor = "Crusoe"
