"""Detokenizer: token ids → text, incrementally and UTF-8 safe, with stop trimming at finish
(stop strings and stop regexes: ``sampling/stop.py``).

Each request keeps a decode window: text is re-decoded from ``surr_offset`` so that a token
whose bytes complete a multi-byte character (or a BPE merge that changes spacing) is rendered
correctly, and text ending in U+FFFD (an incomplete character) is held back until the next
token completes it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from sglite_runtime.managers.io_struct import BatchStrOut, BatchTokenIDOut, FinishStop
from sglite_runtime.sampling.stop import trim_stop

logger = logging.getLogger(__name__)

# Bound on per-rid state kept after a request finished without its final message (never in
# normal operation; protects against a scheduler bug growing memory forever).
MAX_STATES = 65536


@dataclass
class DecodeStatus:
    ids: list[int] = field(default_factory=list)
    text: str = ""  # text confirmed so far (complete characters only)
    surr_offset: int = 0
    read_offset: int = 0


class DetokenizerManager:
    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.states: dict[str, DecodeStatus] = {}
        self.special_ids = frozenset(getattr(tokenizer, "all_special_ids", ()) or ())

    def _decode(self, ids: list[int], skip: bool, spaces: bool = False) -> str:
        """``ids`` as text. With special tokens kept and ``spaces`` (``spaces_between_special_tokens``),
        each special token is set apart from its neighbours by one space, as HF's slow tokenizers
        do; fast tokenizers ignore that option, so the runs between special tokens are decoded
        separately and joined here."""
        if skip or not spaces or not self.special_ids.intersection(ids):
            return self.tokenizer.decode(ids, skip_special_tokens=skip)
        parts: list[str] = []
        run: list[int] = []
        for t in ids:
            if t in self.special_ids:
                if run:
                    parts.append(self.tokenizer.decode(run, skip_special_tokens=False))
                    run = []
                parts.append(self.tokenizer.convert_ids_to_tokens(t))
            else:
                run.append(t)
        if run:
            parts.append(self.tokenizer.decode(run, skip_special_tokens=False))
        return " ".join(parts)

    def handle_batch_token_id_out(self, recv: BatchTokenIDOut) -> BatchStrOut:
        texts = []
        for i, rid in enumerate(recv.rids):
            st = self.states.get(rid)
            if st is None:
                if len(self.states) >= MAX_STATES:
                    self.states.pop(next(iter(self.states)))
                st = self.states[rid] = DecodeStatus()
            skip = recv.skip_special_tokens[i]
            spaces = i < len(recv.spaces_between_special_tokens) and recv.spaces_between_special_tokens[i]
            st.ids.extend(recv.new_token_ids[i])
            reason = recv.finished_reasons[i]
            if len(st.ids) > st.read_offset:
                surr = self._decode(st.ids[st.surr_offset : st.read_offset], skip, spaces)
                full = self._decode(st.ids[st.surr_offset :], skip, spaces)
                if reason is not None or not full.endswith("\ufffd"):
                    st.text += full[len(surr):]
                    st.surr_offset = st.read_offset
                    st.read_offset = len(st.ids)
            text = st.text
            if reason is not None:
                if not recv.no_stop_trim[i] and isinstance(reason, FinishStop):
                    text = self._trim(text, st, reason, skip, spaces)
                del self.states[rid]
            texts.append(text)
        return BatchStrOut(
            rids=recv.rids, texts=texts, new_token_ids=recv.new_token_ids,
            finished_reasons=recv.finished_reasons, prompt_tokens=recv.prompt_tokens,
            completion_tokens=recv.completion_tokens, cached_tokens=recv.cached_tokens,
            output_token_logprobs=recv.output_token_logprobs, output_top_logprobs=recv.output_top_logprobs,
            input_token_logprobs=recv.input_token_logprobs, input_top_logprobs=recv.input_top_logprobs)

    def _trim(self, text: str, st: DecodeStatus, reason: FinishStop, skip: bool, spaces: bool) -> str:
        if isinstance(reason.matched, int) and st.ids:
            # A stop token is not part of the answer; special ones are already skipped.
            return self._decode(st.ids[:-1], skip, spaces)
        return trim_stop(text, reason)
