"""Split a generation into its reasoning part and its answer (``separate_reasoning``).

The same model types and markers as SGLang's ``ReasoningParser`` for the common
think-tag families; kept here (no runtime import) so the frontend stays light.
"""
from __future__ import annotations

from typing import Optional

# model_type -> (start marker, end marker, reasoning starts without a start marker)
_MARKERS: dict[str, tuple[str, str, bool]] = {
    "qwen3": ("<think>", "</think>", False),
    "qwen3-thinking": ("<think>", "</think>", True),
    "deepseek-r1": ("<think>", "</think>", True),
    "deepseek-v3": ("<think>", "</think>", False),
    "glm45": ("<think>", "</think>", False),
    "minimax": ("<think>", "</think>", True),
    "step3": ("<think>", "</think>", True),
    "kimi": ("\u25c1think\u25b7", "\u25c1/think\u25b7", False),
}
DEFAULT_MODEL_TYPE = "qwen3"


def split_reasoning(text: str, model_type: Optional[str] = None) -> tuple[str, str]:
    """Return ``(reasoning, answer)``; ``("", text)`` when there is no reasoning part.

    Text after an unclosed start marker is all reasoning (the budget ended inside it).
    """
    name = model_type or DEFAULT_MODEL_TYPE
    if name not in _MARKERS:
        raise ValueError(f"separate_reasoning: unsupported model_type {model_type!r}; "
                         f"supported: {sorted(_MARKERS)}")
    start, end, forced = _MARKERS[name]
    body = text.lstrip()
    if body.startswith(start):
        body = body[len(start):]
    elif not forced:
        return "", text
    if end not in body:
        return body.strip(), ""
    reasoning, answer = body.split(end, 1)
    return reasoning.strip(), answer.lstrip()
