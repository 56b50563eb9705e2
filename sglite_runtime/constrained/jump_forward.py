"""Jump-forward: the continuation the grammar forces, emitted without sampling.

Soundness argument (byte level).  At a non-accepting state ``s``, let ``B`` be the set of
first bytes of the tokens the Index allows.  Every continuation the grammar accepts from
``s`` starts with a byte of ``B``: the Index allows every token that leads to a live state,
and the single-byte token of that first byte does.  So if ``|B| == 1`` that byte is forced,
and we move to the state after the single-byte token.  Repeating gives the longest forced
byte string.  Accepting states stop the walk (ending there is also legal), as does a byte
with no single-byte token in the vocabulary (we could not track the state).

The forced bytes are then spelled as tokens: with the tokenizer's own encoding when it
reproduces the bytes exactly (canonical tokens are what the model expects), else greedily
with the longest vocabulary tokens.  The result is replayed on a copy of the grammar, so
every returned id is one the mask would allow, in order.

Per-state steps are cached on the shared CompiledIndex, so a forced chain costs a few dict
lookups after the first request has walked it.
"""

from __future__ import annotations

import logging
from typing import Any

from sglite_runtime.constrained.outlines_backend import TERMINATED, OutlinesGrammar

logger = logging.getLogger(__name__)

#: Longest forced string considered in one jump (bytes).
MAX_JUMP_BYTES = 1024


def _forced_step(grammar: OutlinesGrammar, state: int) -> tuple[int, int] | None:
    """(forced byte, next state) at ``state``, or None when more than one byte may follow."""
    compiled = grammar.compiled
    cache = compiled.forced_step
    if state in cache:
        return cache[state]
    step: tuple[int, int] | None = None
    if not compiled.index.is_final_state(state):
        first_bytes = set()
        for tid in compiled.allowed(state):
            data = compiled.token_bytes[tid] if tid < len(compiled.token_bytes) else None
            if data:
                first_bytes.add(data[0])
                if len(first_bytes) > 1:
                    break
        if len(first_bytes) == 1:
            byte = first_bytes.pop()
            single = compiled.single_byte_token.get(byte)
            nxt = compiled.index.get_next_state(state, single) if single is not None else None
            if nxt is not None:
                step = (byte, nxt)
    cache[state] = step
    return step


def jump_forward_str(grammar: OutlinesGrammar, max_bytes: int = MAX_JUMP_BYTES) -> tuple[bytes, int] | None:
    """The forced bytes from the grammar's state and the state after them, or None.

    The grammar is not modified.  The bytes may end inside a UTF-8 character."""
    state = grammar.state
    if state == TERMINATED:
        return None
    out = bytearray()
    while len(out) < max_bytes:
        step = _forced_step(grammar, state)
        if step is None:
            break
        out.append(step[0])
        state = step[1]
    if not out:
        return None
    return bytes(out), state


def _utf8_complete_prefix(data: bytes) -> bytes:
    """Longest prefix of ``data`` that does not end inside a multi-byte character."""
    for cut in range(len(data), max(len(data) - 4, -1), -1):
        try:
            data[:cut].decode("utf-8")
            return data[:cut]
        except UnicodeDecodeError:
            continue
    return b""


def _encode(tokenizer: Any, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens, for HF or raw ``tokenizers``."""
    encoded = tokenizer.encode(text, add_special_tokens=False)
    return list(getattr(encoded, "ids", encoded))


def _greedy_spell(grammar: OutlinesGrammar, data: bytes) -> list[int]:
    """Spell ``data`` with the longest matching vocabulary tokens (always possible when
    every byte has a single-byte token)."""
    table = grammar.compiled.bytes_to_token
    longest = grammar.compiled.max_token_bytes
    ids: list[int] = []
    pos = 0
    while pos < len(data):
        for size in range(min(longest, len(data) - pos), 0, -1):
            tid = table.get(data[pos : pos + size])
            if tid is not None:
                ids.append(tid)
                pos += size
                break
        else:
            break  # a byte the vocabulary cannot spell: stop here
    return ids


def spell_bytes(grammar: OutlinesGrammar, data: bytes, tokenizer: Any | None = None) -> list[int]:
    """Token ids whose bytes concatenate to (a prefix of) ``data``."""
    token_bytes = grammar.compiled.token_bytes
    if tokenizer is not None:
        text_bytes = _utf8_complete_prefix(data)
        if text_bytes:
            try:
                ids = _encode(tokenizer, text_bytes.decode("utf-8"))
            except Exception:  # a tokenizer that cannot encode this piece: use the fallback
                logger.debug("tokenizer failed to encode a forced string", exc_info=True)
                ids = []
            spelled = b"".join((token_bytes[t] or b"") if t < len(token_bytes) else b"" for t in ids)
            if ids and spelled == text_bytes and all(t < len(token_bytes) and token_bytes[t] for t in ids):
                return ids
    return _greedy_spell(grammar, data)


def jump_forward_tokens(
    grammar: OutlinesGrammar,
    tokenizer: Any | None = None,
    max_bytes: int = MAX_JUMP_BYTES,
    utf8_boundary: bool = True,
) -> list[int]:
    """Token ids for the forced continuation, each legal in turn; [] when nothing is forced.

    The grammar is not modified: the caller appends the ids to the request's output and
    calls ``grammar.accept_token`` on each.  With ``utf8_boundary`` (default) the jump stops
    before a character the forced string only partly covers, so detokenized text stays
    well formed; the model then samples the rest of that character."""
    found = jump_forward_str(grammar, max_bytes)
    if found is None:
        return []
    data = found[0]
    if utf8_boundary:
        data = _utf8_complete_prefix(data)
        if not data:
            return []
    ids = spell_bytes(grammar, data, tokenizer)
    probe = grammar.copy()
    accepted = probe.accept_tokens(ids)
    return ids[:accepted]
