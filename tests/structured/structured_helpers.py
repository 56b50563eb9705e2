"""Test helpers: locally trained tokenizers and a model-free random walk over a grammar."""

from __future__ import annotations

import json
import os
import random
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from sglite_runtime.constrained.outlines_backend import OutlinesGrammar

SHIPPED_TOKENIZER = os.path.join(
    os.path.dirname(__file__), "..", "..", "sglite_runtime", "assets", "sglite-tiny", "tokenizer.json"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_WORDS = (
    "the quick brown fox jumps over lazy dog name age city email value items true false null "
    "price id user first last color red green blue point start end kind circle radius score "
    "answer confidence paid qty sku tags label nickname active"
).split()


def training_corpus(n: int = 1500, seed: int = 0) -> list[str]:
    """JSON records, digits, prose and some non-ASCII text."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        record = {
            rng.choice(_WORDS): rng.randint(-1000, 100000),
            "name": " ".join(rng.choices(_WORDS, k=3)),
            "ok": rng.choice([True, False, None]),
            "x": round(rng.uniform(-100, 100), 3),
            "tags": rng.choices(_WORDS, k=rng.randint(0, 3)),
        }
        out.append(json.dumps(record, indent=rng.choice([None, 2])))
        out.append(" ".join(rng.choices(_WORDS, k=10)) + f" {rng.randint(0, 10**6)} café naïve 日本語 😀")
    return out


def train_byte_level_bpe(vocab_size: int = 800) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    return tok


def train_sentencepiece_bpe(vocab_size: int = 600) -> Tokenizer:
    """Llama-2 style: Metaspace ``▁`` spaces and ``<0xXX>`` byte-fallback tokens."""
    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token=None))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.pre_tokenizer = pre_tokenizers.Split("\u2581", behavior="merged_with_next")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"] + byte_tokens, show_progress=False
    )
    # Keep the alphabet ASCII-only so non-ASCII text must use the byte fallback.
    ascii_corpus = [t.encode("ascii", "ignore").decode() for t in training_corpus(600, seed=1)]
    tok.train_from_iterator(ascii_corpus, trainer=trainer)
    # As in Llama's tokenizer.json, the byte tokens are ordinary vocabulary entries, not
    # added/special tokens: drop them from ``added_tokens`` (they stay in the model vocab).
    spec = json.loads(tok.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if not t["content"].startswith("<0x")]
    return Tokenizer.from_str(json.dumps(spec))


def distances_to_accept(grammar: OutlinesGrammar) -> dict[int, int]:
    """Fewest tokens from each state to an accepting state (reverse BFS on the Index)."""
    index = grammar.compiled.index
    transitions = index.get_transitions()
    reverse: dict[int, list[int]] = {}
    for src, edges in transitions.items():
        for tid, dst in edges.items():
            if not grammar.compiled.is_stop(tid):
                reverse.setdefault(dst, []).append(src)
    dist = {s: 0 for s in index.get_final_states()}
    frontier = list(dist)
    while frontier:
        nxt = []
        for state in frontier:
            for src in reverse.get(state, ()):
                if src not in dist:
                    dist[src] = dist[state] + 1
                    nxt.append(src)
        frontier = nxt
    return dist


def random_walk(
    grammar: OutlinesGrammar, rng: random.Random, free_steps: int = 40, max_steps: int = 400, dist: dict[int, int] | None = None
) -> tuple[bytes, list[int], bool]:
    """Sample allowed tokens at random (then steer to an accepting state) until the walk
    ends with a stop token or the grammar terminates.  Returns (bytes, ids, finished)."""
    compiled = grammar.compiled
    dist = dist if dist is not None else distances_to_accept(grammar)
    out = bytearray()
    ids: list[int] = []
    for step in range(max_steps):
        if grammar.is_terminated():
            return bytes(out), ids, True
        allowed = grammar.allowed_token_ids()
        assert allowed, "a live state must allow some token"
        if step < free_steps:
            tid = rng.choice(allowed)
        else:
            # Steer: only tokens (or a stop) that bring the state strictly closer to accepting.
            here = dist.get(grammar.state, 10**9)
            closer = [t for t in allowed if compiled.is_stop(t)
                      or dist.get(compiled.next_state(grammar.state, t), 10**9) < here]
            tid = rng.choice(closer or allowed)
        assert grammar.accept_token(tid), f"allowed token {tid} rejected"
        if compiled.is_stop(tid):
            return bytes(out), ids, True
        ids.append(tid)
        out += compiled.token_bytes[tid]
    return bytes(out), ids, False


def load_hf_tokenizer(path: str) -> Any:
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=path, eos_token="<|endoftext|>")
