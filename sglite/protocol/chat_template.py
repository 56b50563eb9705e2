"""Role prefixes and suffixes derived from the model's own Jinja chat template.

Instead of a hand-written table per model family, we render the template with
sentinel contents and cut the output around them:

* the prefix of the first message is everything before its sentinel;
* the prefix of a later message is the text between the previous sentinel and
  this one, minus the previous message's suffix (already emitted);
* a message's suffix is everything after its sentinel when it is the last one.

A leading ``bos_token`` is dropped because the runtime's tokenizer adds it.
Without a template (or when the template rejects a role sequence) we fall back
to a plain ``ROLE: content\\n`` format.
"""
from __future__ import annotations

import functools
import logging
from datetime import datetime
from typing import Any, Optional

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


def _sentinel(i: int) -> str:
    # Alphanumeric so that templates which trim or escape content keep it intact.
    return f"SGLITESENTINEL{i}QZX"


def _raise_exception(message: str) -> None:
    raise ValueError(message)


class ChatTemplate:
    """Per-role prefix/suffix strings computed from a Jinja chat template."""

    def __init__(
        self,
        template: Optional[str] = None,
        bos_token: Optional[str] = None,
        eos_token: Optional[str] = None,
        image_token: Optional[str] = None,
    ) -> None:
        self.template_str = template
        self.bos_token = bos_token or ""
        self.eos_token = eos_token or ""
        self.image_token = image_token
        self._compiled = None
        if template:
            from jinja2.ext import loopcontrols
            from jinja2.sandbox import ImmutableSandboxedEnvironment

            env = ImmutableSandboxedEnvironment(
                trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]
            )
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            self._compiled = env.from_string(template)

    @classmethod
    def from_model_info(cls, info: dict[str, Any]) -> "ChatTemplate":
        """Build from ``/get_model_info`` (or ``Engine.get_model_info()``) fields."""
        return cls(
            template=info.get("chat_template"),
            bos_token=info.get("bos_token"),
            eos_token=info.get("eos_token"),
            image_token=info.get("image_token"),
        )

    @property
    def has_template(self) -> bool:
        return self._compiled is not None

    # -- public API -------------------------------------------------------
    def prefix(self, role: str, history: tuple[str, ...] = ()) -> str:
        """Text that opens a ``role`` message after messages with roles ``history``."""
        return self._prefix_suffix(role, tuple(history))[0]

    def suffix(self, role: str, history: tuple[str, ...] = ()) -> str:
        """Text that closes a ``role`` message after messages with roles ``history``."""
        return self._prefix_suffix(role, tuple(history))[1]

    # -- internals --------------------------------------------------------
    def _render(self, roles: tuple[str, ...]) -> str:
        assert self._compiled is not None  # only called by _prefix_suffix, which checks it
        messages = [{"role": r, "content": _sentinel(i)} for i, r in enumerate(roles)]
        return self._compiled.render(
            messages=messages,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            add_generation_prompt=False,
            tools=None,
        )

    @staticmethod
    def _plain(role: str) -> tuple[str, str]:
        return f"{role.upper()}: ", "\n"

    @functools.lru_cache(maxsize=256)
    def _prefix_suffix(self, role: str, history: tuple[str, ...]) -> tuple[str, str]:
        if self._compiled is None:
            return self._plain(role)
        roles = history + (role,)
        try:
            rendered = self._render(roles)
            last = _sentinel(len(history))
            start = rendered.index(last)
        except Exception as e:  # template rejected this role order, or dropped content
            if history:
                logger.debug("chat template failed for roles %s (%s); rendering %r alone", roles, e, role)
                prefix, suffix = self._prefix_suffix(role, ())
                return prefix, suffix
            logger.warning("chat template cannot render role %r (%s); using a plain format", role, e)
            return self._plain(role)
        suffix = rendered[start + len(last):]
        if not history:
            prefix = rendered[:start]
            if self.bos_token and prefix.startswith(self.bos_token):
                prefix = prefix[len(self.bos_token):]
            return prefix, suffix
        prev = _sentinel(len(history) - 1)
        between = rendered[rendered.index(prev) + len(prev):start]
        prev_suffix = self._prefix_suffix(history[-1], history[:-1])[1]
        # Drop the part of the previous suffix that was already emitted.
        k = 0
        while k < min(len(between), len(prev_suffix)) and between[k] == prev_suffix[k]:
            k += 1
        return between[k:], suffix
