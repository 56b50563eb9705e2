"""Session fixtures: tokenizers trained locally (no hub access) and backends over them."""

from __future__ import annotations

import os

import pytest

from structured_helpers import (
    SHIPPED_TOKENIZER,
    load_hf_tokenizer,
    train_byte_level_bpe,
    train_sentencepiece_bpe,
)


@pytest.fixture(scope="session")
def bpe_tokenizer():
    return train_byte_level_bpe()


@pytest.fixture(scope="session")
def sp_tokenizer():
    return train_sentencepiece_bpe()


@pytest.fixture(scope="session")
def shipped_tokenizer():
    if not os.path.exists(SHIPPED_TOKENIZER):
        pytest.skip("shipped sglite-tiny tokenizer not built yet")
    return load_hf_tokenizer(SHIPPED_TOKENIZER)


@pytest.fixture(scope="session")
def backend(bpe_tokenizer):
    from sglite_runtime.constrained.outlines_backend import OutlinesGrammarBackend

    # A padded model vocabulary (832 > 800) so the mask must disallow the padding ids.
    return OutlinesGrammarBackend(bpe_tokenizer, vocab_size=832)
