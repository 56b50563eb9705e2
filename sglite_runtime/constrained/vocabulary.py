"""Exact byte strings of a local HF tokenizer's tokens, and the outlines-core Vocabulary.

outlines-core 0.2.x matches *bytes* (``Vocabulary(eos_id, {bytes: [ids]})`` is accepted and
the automaton runs over UTF-8 bytes), so a token that holds half of a multi-byte character
is fine as long as we hand it its exact bytes.  The token strings in ``tokenizer.json`` are
not those bytes:

* byte-level BPE (GPT-2, Llama 3, Qwen) stores every byte as a printable stand-in
  character (``bytes_to_unicode``); we invert that table;
* SentencePiece-style vocabularies write a space as ``▁`` and fall back to ``<0xXX>``
  tokens for raw bytes;
* added (non-special) tokens are stored as plain text.

Special tokens (and hence EOS) are left out: the Index allows EOS by itself, and only in
accepting states.  ``Vocabulary.from_pretrained`` is never used: it needs the HF hub.
"""

from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any

import outlines_core

logger = logging.getLogger(__name__)

_BYTE_FALLBACK_RE = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")
_SPIECE_SPACE = "\u2581"  # "▁"
_EOS_NAMES = ("<|endoftext|>", "</s>", "<eos>", "<|eot_id|>", "<|end_of_text|>", "<|im_end|>")


@functools.lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: stand-in character -> byte value.

    Printable Latin-1 bytes stand for themselves; the other 68 byte values are shifted to
    code points 256.. in increasing order, so the table is a pure function of the spec.
    """
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def _backend(tokenizer: Any) -> Any:
    """The underlying ``tokenizers.Tokenizer`` of a HF fast tokenizer (or itself)."""
    return getattr(tokenizer, "backend_tokenizer", tokenizer)


def _component_types(node: Any) -> set[str]:
    """All ``type`` names in a (possibly nested ``Sequence``) tokenizer.json component."""
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("type"), str):
            found.add(node["type"])
        for value in node.values():
            found |= _component_types(value)
    elif isinstance(node, list):
        for value in node:
            found |= _component_types(value)
    return found


def detect_style(tokenizer: Any) -> str:
    """``"byte_level"``, ``"sentencepiece"`` or ``"plain"`` from the tokenizer's config."""
    spec = json.loads(_backend(tokenizer).to_str())
    types = _component_types(spec.get("decoder")) | _component_types(spec.get("pre_tokenizer"))
    if "ByteLevel" in types:
        return "byte_level"
    model = spec.get("model") or {}
    if "Metaspace" in types or "ByteFallback" in types or model.get("byte_fallback"):
        return "sentencepiece"
    return "plain"


def token_to_bytes(token: str, style: str) -> bytes:
    """Exact bytes of one (non-added) vocabulary entry under ``style``."""
    if style == "byte_level":
        table = byte_decoder()
        try:
            return bytes(table[ch] for ch in token)
        except KeyError:
            # Not a stand-in string (e.g. a hand-added entry); it is literal text.
            return token.encode("utf-8")
    if style == "sentencepiece":
        match = _BYTE_FALLBACK_RE.match(token)
        if match:
            return bytes([int(match.group(1), 16)])
        return token.replace(_SPIECE_SPACE, " ").encode("utf-8")
    return token.encode("utf-8")


def resolve_eos_token_ids(tokenizer: Any, eos_token_ids: int | list[int] | None) -> list[int]:
    """Stop ids: the explicit argument, else the tokenizer's ``eos_token_id``, else a
    well-known EOS name present in a raw ``tokenizers.Tokenizer``."""
    if eos_token_ids is not None:
        ids = [eos_token_ids] if isinstance(eos_token_ids, int) else list(eos_token_ids)
        if ids:
            return ids
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        return [eos]
    backend = _backend(tokenizer)
    for name in _EOS_NAMES:
        tid = backend.token_to_id(name)
        if tid is not None:
            return [tid]
    raise ValueError("cannot determine the EOS token id; pass eos_token_ids explicitly")


def compute_token_bytes(tokenizer: Any) -> tuple[list[bytes | None], set[int]]:
    """Per-id exact bytes (None for special tokens) and the set of special ids."""
    backend = _backend(tokenizer)
    style = detect_style(tokenizer)
    vocab: dict[str, int] = backend.get_vocab(with_added_tokens=True)
    added = backend.get_added_tokens_decoder()  # id -> AddedToken
    special_ids = {tid for tid, tok in added.items() if tok.special}
    size = max(vocab.values(), default=-1) + 1
    token_bytes: list[bytes | None] = [None] * size
    for token, tid in vocab.items():
        if tid in special_ids:
            continue
        if tid in added:
            # Added tokens are matched on the raw text, before the byte-level mapping.
            token_bytes[tid] = added[tid].content.encode("utf-8")
        else:
            token_bytes[tid] = token_to_bytes(token, style)
    logger.debug("vocabulary style=%s size=%d special=%d", style, size, len(special_ids))
    return token_bytes, special_ids


def build_vocabulary(
    tokenizer: Any, eos_token_ids: int | list[int] | None = None
) -> tuple[outlines_core.Vocabulary, list[bytes | None]]:
    """outlines-core Vocabulary from a local tokenizer, plus the per-id exact bytes.

    ``tokenizer`` is a ``PreTrainedTokenizerFast`` or a ``tokenizers.Tokenizer``.  The
    returned list has one entry per token id; special tokens, stop ids and empty tokens are
    None (never allowed by the mask, except stop ids in accepting states).
    """
    stop_ids = resolve_eos_token_ids(tokenizer, eos_token_ids)
    token_bytes, _ = compute_token_bytes(tokenizer)
    for tid in stop_ids:
        if 0 <= tid < len(token_bytes):
            token_bytes[tid] = None
    mapping: dict[bytes, list[int]] = {}
    for tid, data in enumerate(token_bytes):
        if data:
            mapping.setdefault(data, []).append(tid)
        elif data is not None:
            token_bytes[tid] = None  # an empty token can never make progress
    return outlines_core.Vocabulary(stop_ids[0], mapping), token_bytes
