"""Reasoning separation: the ``<think>...</think>`` part of an output goes to
``reasoning_content`` (``--reasoning-parser qwen3``/``deepseek-r1``, SGLang's
``separate_reasoning`` request field).

* ``qwen3``: the model writes ``<think>`` itself; an output without it is all content, and
  one whose ``<think>`` is never closed is all reasoning (cut by the budget).
* ``deepseek-r1``: the template opens ``<think>`` in the prompt, so the output starts inside
  the reasoning: everything before ``</think>`` is reasoning.
"""

from __future__ import annotations

THINK_START, THINK_END = "<think>", "</think>"
PARSERS = ("qwen3", "deepseek-r1")


def split_reasoning(text: str, parser: str) -> tuple[str | None, str]:
    """``(reasoning_content, content)`` of a whole output."""
    stripped = text.lstrip()
    if stripped.startswith(THINK_START):
        body = stripped[len(THINK_START):]
    elif parser == "deepseek-r1" or THINK_END in text:
        body = text
    else:
        return None, text
    if THINK_END not in body:
        return body.strip() or None, ""
    reasoning, content = body.split(THINK_END, 1)
    return reasoning.strip() or None, content.lstrip()


class ReasoningStream:
    """Streaming split: each text delta -> (reasoning delta, content delta).

    Text that could still be the start of ``<think>`` / ``</think>`` is held back until it
    is decided, so no tag ever leaks into either field."""

    def __init__(self, parser: str):
        self.parser = parser
        self.buffer = ""
        # "start": nothing decided; "think": inside the reasoning; "answer": just after
        # "</think>" (leading whitespace dropped); "content": the answer.
        self.phase = "start"

    def feed(self, delta: str) -> tuple[str, str]:
        self.buffer += delta
        reasoning = content = ""
        if self.phase == "start":
            head = self.buffer.lstrip()
            if head.startswith(THINK_START):
                self.buffer = head[len(THINK_START):].lstrip("\n")
                self.phase = "think"
            elif THINK_START.startswith(head):
                return "", ""  # still undecided
            else:  # deepseek-r1: the template opened <think>, the output starts inside it
                self.phase = "think" if self.parser == "deepseek-r1" else "content"
        if self.phase == "think":
            end = self.buffer.find(THINK_END)
            if end >= 0:
                reasoning = self.buffer[:end]
                self.buffer = self.buffer[end + len(THINK_END):]
                self.phase = "answer"
            else:
                keep = _partial_suffix(self.buffer, THINK_END)
                reasoning = self.buffer[: len(self.buffer) - keep]
                self.buffer = self.buffer[len(self.buffer) - keep:]
                return reasoning, ""
        if self.phase == "answer":  # drop the whitespace between "</think>" and the answer
            self.buffer = self.buffer.lstrip()
            if self.buffer:
                self.phase = "content"
        if self.phase == "content":
            content, self.buffer = self.buffer, ""
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        rest, self.buffer = self.buffer, ""
        if self.phase == "think":
            return rest, ""
        return "", rest


def _partial_suffix(text: str, marker: str) -> int:
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
