"""Token bytes are exact: encodings round-trip to the text's UTF-8; specials are excluded."""

from __future__ import annotations

import pytest

from sglite_runtime.constrained.vocabulary import build_vocabulary, byte_decoder, detect_style

TEXTS = [
    '{"name": "café", "age": 42, "tags": ["日本語", "😀"]}',
    "the quick brown fox 1234567890 naïve",
    "  leading spaces\nand\ttabs",
    "emoji 😀😀 and ünïcödé ß",
]


def _ids(tokenizer, text):
    enc = tokenizer.encode(text, add_special_tokens=False)
    return list(getattr(enc, "ids", enc))


def _check_roundtrip(tokenizer, token_bytes, text, strip_leading_space=False):
    data = b"".join(token_bytes[t] for t in _ids(tokenizer, text))
    if strip_leading_space and data.startswith(b" ") and not text.startswith(" "):
        data = data[1:]  # a SentencePiece-style prefix space
    assert data == text.encode("utf-8")


def test_byte_decoder_is_a_bijection():
    table = byte_decoder()
    assert len(table) == 256 and sorted(table.values()) == list(range(256))
    assert table["Ġ"] == 0x20 and table["Ċ"] == 0x0A and table["a"] == ord("a")


def test_byte_level_roundtrip(bpe_tokenizer):
    assert detect_style(bpe_tokenizer) == "byte_level"
    vocab, token_bytes = build_vocabulary(bpe_tokenizer)
    for text in TEXTS:
        _check_roundtrip(bpe_tokenizer, token_bytes, text)
    # Multi-byte characters are split into partial-UTF-8 tokens: those must be raw bytes too.
    partial = [b for b in token_bytes if b is not None and len(b) == 1 and b[0] >= 0x80]
    assert len(partial) >= 64


def test_specials_and_eos_excluded(bpe_tokenizer):
    vocab, token_bytes = build_vocabulary(bpe_tokenizer)
    for name in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert token_bytes[bpe_tokenizer.token_to_id(name)] is None
    assert vocab.get_eos_token_id() == bpe_tokenizer.token_to_id("<|endoftext|>")
    assert vocab.get(b"<|im_end|>") is None


def test_sentencepiece_byte_fallback(sp_tokenizer):
    assert detect_style(sp_tokenizer) == "sentencepiece"
    _, token_bytes = build_vocabulary(sp_tokenizer, eos_token_ids=sp_tokenizer.token_to_id("</s>"))
    assert token_bytes[sp_tokenizer.token_to_id("<0x0A>")] == b"\n"
    assert token_bytes[sp_tokenizer.token_to_id("<0xE6>")] == b"\xe6"
    spaced = [t for t, i in sp_tokenizer.get_vocab().items() if t.startswith("\u2581") and len(t) > 1]
    assert spaced and token_bytes[sp_tokenizer.token_to_id(spaced[0])].startswith(b" ")
    for text in TEXTS:
        _check_roundtrip(sp_tokenizer, token_bytes, text, strip_leading_space=True)
    assert token_bytes[sp_tokenizer.token_to_id("</s>")] is None


def test_hf_wrapper_and_shipped(bpe_tokenizer, tmp_path):
    from transformers import PreTrainedTokenizerFast

    path = tmp_path / "tokenizer.json"
    bpe_tokenizer.save(str(path))
    hf = PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token="<|endoftext|>")
    _, raw = build_vocabulary(bpe_tokenizer)
    _, wrapped = build_vocabulary(hf)
    assert raw == wrapped


def test_shipped_tokenizer_roundtrip(shipped_tokenizer):
    _, token_bytes = build_vocabulary(shipped_tokenizer)
    for text in TEXTS:
        _check_roundtrip(shipped_tokenizer, token_bytes, text)


def test_missing_eos_is_reported():
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.BPE())
    with pytest.raises(ValueError, match="EOS"):
        build_vocabulary(tok)
