"""Stop strings and stop regexes: when a request finishes on text, and where its answer ends.

The scheduler calls :func:`match_stop_text` after each new token (it owns the finish decision,
so a matched request stops generating at once); the detokenizer calls :func:`trim_stop` on the
final text (it owns the text). Both read the same finish reason:

- ``FinishStop(matched="</s>")`` for a stop string (trimmed at its first occurrence);
- ``FinishStop(matched="\\d+\\.", regex=True)`` for a stop regex (trimmed at the start of its
  first match in the final text).

A stop string is searched in a decoded tail of ``stop_str_max_len + 2`` tokens (a match ends in
the newest token). A regex can match text of any length, so it is searched in the whole decoded
output, with the request's own ``skip_special_tokens``: what it sees is what the user gets.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from sglite_runtime.managers.io_struct import FinishStop

Decode = Callable[[list[int], bool], str]


def match_stop_text(sp: Any, output_ids: list[int], decode: Decode) -> FinishStop | None:
    """The finish reason when the output now contains a stop string or matches a stop regex."""
    if sp.stop:
        tail = decode(output_ids[-(sp.stop_str_max_len + 2):], False)
        for s in sp.stop:
            if s and s in tail:
                return FinishStop(matched=s)
    if sp.stop_regex:
        text = decode(output_ids, sp.skip_special_tokens)
        for pattern in sp.stop_regex:
            if re.search(pattern, text):
                return FinishStop(matched=pattern, regex=True)
    return None


def trim_stop(text: str, reason: FinishStop) -> str:
    """``text`` cut before the stop string or stop-regex match named by ``reason``."""
    matched = reason.matched
    if not isinstance(matched, str) or not matched:
        return text
    if reason.regex:
        m = re.search(matched, text)
        return text[: m.start()] if m else text
    pos = text.find(matched)
    return text[:pos] if pos >= 0 else text
