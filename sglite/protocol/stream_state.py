"""The text side of one program stream: appends, roles, variable scopes and forks.

Both the interpreter's ``StreamExecutor`` (a worker thread per stream) and the server's program
executor (an asyncio task per stream) keep one ``StreamText`` per stream and drive it, so roles,
messages, ``var_begin/var_end`` captures and fork copies are written once. The drivers add what
is theirs: locks and variable events (interpreter), event queues and dataflow (executor).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from sglite.protocol.chat_template import ChatTemplate
from sglite.protocol.graph_nodes import TEXTLESS, Fill, Node, RoleBegin, RoleEnd


@dataclass
class StreamText:
    """Text, chat messages and open scopes of one stream."""

    text: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)
    role_history: list[str] = field(default_factory=list)
    cur_role: Optional[str] = None
    cur_role_begin_pos: int = 0
    cur_role_images: list[str] = field(default_factory=list)
    # name -> (start position, the driver's tag for the scope, e.g. its begin node)
    var_scope_begin: dict[str, tuple[int, Any]] = field(default_factory=dict)
    fork_start: Optional[int] = None  # len(text) when this stream was forked off its parent

    def append(self, text: str) -> str:
        self.text += text
        return text

    def role_begin(self, role: str, template: ChatTemplate) -> str:
        """Open ``role``: append and return the template's prefix. Roles cannot nest."""
        if self.cur_role is not None:
            raise AssertionError(f"role {role!r} begins inside role {self.cur_role!r}; roles cannot nest")
        prefix = self.append(template.prefix(role, tuple(self.role_history)))
        self.cur_role, self.cur_role_begin_pos, self.cur_role_images = role, len(self.text), []
        return prefix

    def role_image(self, image_b64: str) -> None:
        """An image inside the open role: it becomes part of that message's content."""
        self.cur_role_images.append(image_b64)

    def role_end(self, role: str, template: ChatTemplate) -> str:
        """Close ``role``: append and return the suffix, record the message."""
        if self.cur_role != role:
            raise AssertionError(f"role {role!r} ends but the open role is {self.cur_role!r}")
        content_text = self.text[self.cur_role_begin_pos:].lstrip()
        suffix = self.append(template.suffix(role, tuple(self.role_history)))
        content: Any = content_text
        if self.cur_role_images:
            content = [{"type": "text", "text": content_text}] + [
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{img}"}}
                for img in self.cur_role_images]
        self.messages.append({"role": role, "content": content})
        self.role_history.append(role)
        self.cur_role, self.cur_role_images = None, []
        return suffix

    def var_begin(self, name: str, tag: Any = None) -> None:
        self.var_scope_begin[name] = (len(self.text), tag)

    def var_end(self, name: str) -> tuple[str, Any]:
        """The text captured since ``var_begin(name)`` (empty without one) and the scope's tag."""
        start, tag = self.var_scope_begin.pop(name, (len(self.text), None))
        return self.text[start:], tag

    def fork(self) -> "StreamText":
        """A branch's starting state: a copy whose ``fork_start`` marks where it left the parent."""
        child = StreamText(self.text, copy.deepcopy(self.messages), list(self.role_history), self.cur_role,
                           self.cur_role_begin_pos, list(self.cur_role_images))
        child.fork_start = len(child.text)
        return child

    def since_fork(self) -> str:
        """What this branch added after its fork (``concate_and_append`` joins append it)."""
        return self.text[self.fork_start or 0:]


def gathered_names(parent_vars: Iterable[str], branch_vars: list[Iterable[str]]) -> list[str]:
    """The variables a ``gather_variable`` join turns into lists in the parent: those the branches
    created (not in the parent at the fork), in first-seen order across the branches."""
    base = set(parent_vars)
    names: list[str] = []
    for vs in branch_vars:
        names += [n for n in vs if n not in base and n not in names]
    return names


def static_prefix(nodes: Sequence[Node], template: ChatTemplate) -> str:
    """A graph stream's text before its first model call (fills and role markers)."""
    st = StreamText()
    for n in nodes:
        if isinstance(n, Fill):
            st.append(n.text)
        elif isinstance(n, RoleBegin) and st.cur_role is None:
            st.role_begin(n.role, template)
        elif isinstance(n, RoleEnd) and st.cur_role == n.role:
            st.role_end(n.role, template)
        elif not isinstance(n, TEXTLESS):
            break
    return st.text
