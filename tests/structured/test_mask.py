"""Batch masks: row fill, one vectorized apply, padded vocabulary, mixed batches."""

from __future__ import annotations

import pytest
import torch

from sglite_runtime.constrained.outlines_backend import OutlinesGrammarBackend, pack_token_ids


def _allowed_from_mask(row: torch.Tensor, vocab: int) -> set[int]:
    return {t for t in range(vocab) if (int(row[t // 32]) >> (t % 32)) & 1}


def test_pack_roundtrip():
    ids = [0, 1, 31, 32, 63, 64, 799, 831]
    row = pack_token_ids(ids, 832)
    assert row.dtype == torch.int32 and row.shape == (26,)
    assert _allowed_from_mask(row, 832) == set(ids)
    assert pack_token_ids([5, 900], 832).count_nonzero() == 1  # out-of-range ids dropped


def test_fill_matches_allowed_and_padding_disallowed(backend):
    grammar = backend.new_grammar(backend.compile(("regex", "[0-9]+(abc)?")))
    mask = backend.allocate_vocab_mask(backend.vocab_size, 1, "cpu")
    grammar.fill_vocab_mask(mask, 0)
    assert _allowed_from_mask(mask[0], backend.vocab_size) == set(grammar.allowed_token_ids())
    assert all(t < 800 for t in grammar.allowed_token_ids())
    # Accepting states allow EOS.
    digit = next(t for t in grammar.allowed_token_ids() if backend.token_bytes[t] == b"7")
    grammar.accept_token(digit)
    assert 0 in grammar.allowed_token_ids() and grammar.is_accepting()


def test_apply_mixed_batch(backend):
    vocab = backend.vocab_size
    g1 = backend.new_grammar(backend.compile(("regex", "(yes|no)")))
    g2 = backend.new_grammar(backend.compile(("regex", "[0-9]+")))
    mask = backend.allocate_vocab_mask(vocab, 4, "cpu")
    g1.fill_vocab_mask(mask, 0)
    g2.fill_vocab_mask(mask, 2)  # rows 1 and 3 unconstrained
    torch.manual_seed(0)
    logits = torch.randn(4, vocab)
    original = logits.clone()
    OutlinesGrammarBackend.apply_vocab_mask(logits, mask)
    assert torch.equal(logits[1], original[1]) and torch.equal(logits[3], original[3])
    for row, grammar in ((0, g1), (2, g2)):
        finite = set(torch.isfinite(logits[row]).nonzero().flatten().tolist())
        assert finite == set(grammar.allowed_token_ids())
        assert torch.equal(logits[row][sorted(finite)], original[row][sorted(finite)])
    # The masked argmax is always a legal token.
    for row, grammar in ((0, g1), (2, g2)):
        assert grammar.accept_token(int(logits[row].argmax()))


def test_apply_narrow_mask_disallows_tail(backend):
    mask = OutlinesGrammarBackend.allocate_vocab_mask(64, 2, "cpu")
    logits = torch.zeros(2, 80)
    OutlinesGrammarBackend.apply_vocab_mask(logits, mask)
    assert torch.isinf(logits[:, 64:]).all() and torch.isfinite(logits[:, :64]).all()
    OutlinesGrammarBackend.reset_vocab_mask_row(mask, 0)
    assert (mask[0] == -1).all()


def test_rollback_and_termination(backend):
    grammar = backend.new_grammar(backend.compile(("regex", "ab")))
    start = grammar.state
    ids = [t for t in grammar.allowed_token_ids()]
    tid_a = next(t for t in ids if backend.token_bytes[t] == b"a")
    assert grammar.accept_token(tid_a)
    assert not grammar.accept_token(tid_a)  # illegal: state unchanged
    tid_b = next(t for t in grammar.allowed_token_ids() if backend.token_bytes[t] == b"b")
    assert grammar.accept_token(tid_b)
    assert grammar.is_terminated()  # only EOS may follow
    assert grammar.accept_token(0) and grammar.is_terminated()
    grammar.rollback(3)
    assert grammar.state == start and not grammar.is_terminated()


def test_cold_and_warm_rows_agree_with_extra_stop_ids(bpe_tokenizer):
    stops = [bpe_tokenizer.token_to_id("<|endoftext|>"), bpe_tokenizer.token_to_id("<|im_end|>")]
    be = OutlinesGrammarBackend(bpe_tokenizer, vocab_size=832, eos_token_ids=stops)
    compiled = be.compile(("regex", "[0-9]{1,3}"))
    grammar = be.new_grammar(compiled)
    seven = next(t for t in grammar.allowed_token_ids() if be.token_bytes[t] == b"7")
    grammar.accept_token(seven)
    cold = be.allocate_vocab_mask(832, 2, "cpu")
    grammar.fill_vocab_mask(cold, 1)  # first visit: the Guide writes the row
    warm = be.allocate_vocab_mask(832, 2, "cpu")
    grammar.copy().fill_vocab_mask(warm, 0)  # cached row
    assert torch.equal(cold[1], warm[0])
    allowed = _allowed_from_mask(cold[1], 832)
    assert set(stops) <= allowed and allowed == set(grammar.allowed_token_ids())
    assert grammar.accept_token(stops[1]) and grammar.is_terminated()
    grammar.rollback(1)
    assert not grammar.is_terminated() and grammar.accept_token(stops[0])


def test_non_contiguous_mask_falls_back(backend):
    grammar = backend.new_grammar(backend.compile(("regex", "(yes|no)")))
    words = (backend.vocab_size + 31) // 32
    big = torch.full((2, 2 * words), -1, dtype=torch.int32)
    mask = big[:, :words]
    assert not mask.is_contiguous()
    grammar.fill_vocab_mask(mask, 1)
    assert _allowed_from_mask(mask[1], backend.vocab_size) == set(grammar.allowed_token_ids())
    assert (big[1, words:] == -1).all() and (big[0] == -1).all()


def test_copy_mid_stream_is_independent(backend):
    grammar = backend.new_grammar(backend.compile(("regex", "[a-c]{4}")))
    grammar.accept_token(grammar.allowed_token_ids()[0])
    dup = grammar.copy()
    assert dup.state == grammar.state
    dup.accept_token(dup.allowed_token_ids()[0])
    assert dup.state != grammar.state
    dup.rollback(2)
    assert dup.state == grammar.compiled.initial_state and grammar.state != dup.state


def test_rollback_deeper_than_guide_buffer(bpe_tokenizer):
    be = OutlinesGrammarBackend(bpe_tokenizer, max_rollback=2)
    grammar = be.new_grammar(be.compile(("regex", "[a-c]{6}")))
    states = [grammar.state]
    for _ in range(5):
        grammar.accept_token(grammar.allowed_token_ids()[-1])
        states.append(grammar.state)
    grammar.rollback(1)
    assert grammar.state == states[4]
    grammar.rollback(4)  # beyond the Guide's buffer of 2: rebuilt by replay
    assert grammar.state == states[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("extra", [0, 24, 100])
def test_cpu_fast_path_matches_bitwise_reference(dtype, extra):
    # apply_vocab_mask's CPU path (numpy unpack + copyto) against a per-bit reference, on
    # logits wider than the mask and on a non-contiguous view (as the sampler passes them).
    import numpy as np

    vocab, bs = 1000, 4
    rng = np.random.default_rng(extra)
    mask = OutlinesGrammarBackend.allocate_vocab_mask(vocab, bs)
    for i in range(bs - 1):  # the last row stays unconstrained
        mask[i] = pack_token_ids(rng.choice(vocab, 50, replace=False), vocab)
    big = torch.randn(bs, vocab + extra + 8).to(dtype)
    logits = big[:, : vocab + extra]
    expect = logits.clone()
    width = mask.shape[1] * 32
    for i in range(bs):
        words = mask[i].numpy().view(np.uint32)
        for t in range(vocab + extra):
            if t >= width or not (words[t // 32] >> (t % 32)) & 1:
                expect[i, t] = float("-inf")
    OutlinesGrammarBackend.apply_vocab_mask(logits, mask)
    assert torch.equal(logits, expect)
    assert torch.isfinite(big[:, vocab + extra:]).all()  # nothing outside the view touched
