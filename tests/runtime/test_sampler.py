"""Sampler, penalties, SamplingBatchInfo surgery and logprob helpers on crafted logits."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from sglite_runtime.layers.sampler import Sampler, apply_penalties, seeded_uniform
from sglite_runtime.sampling.sampling_batch_info import SamplingBatchInfo
from sglite_runtime.sampling.sampling_params import SamplingParams

V = 16


def make_req(seed: int = 0, output_ids=(), input_ids=(1, 2, 3), **params):
    sp = SamplingParams(**params).normalize()
    sp.verify(V)
    return SimpleNamespace(sampling_params=sp, seed=seed, output_ids=list(output_ids),
                           origin_input_ids=list(input_ids))


def info_for(reqs, vocab=V, eos=None) -> SamplingBatchInfo:
    return SamplingBatchInfo.from_reqs(reqs, vocab, "cpu", eos_token_ids=eos)


sampler = Sampler()


def assert_close(a: torch.Tensor, b: torch.Tensor) -> None:
    # torch.isclose treats equal infinities as close; cheaper to import than torch.testing.
    assert a.shape == b.shape and torch.isclose(a, b, rtol=1e-5, atol=1e-5).all(), (a, b)


# ---------------------------------------------------------------------------- greedy


def test_greedy_and_top_k_1() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, V)
    reqs = [make_req(temperature=0.0, seed=1), make_req(top_k=1, temperature=0.8, seed=2),
            make_req(temperature=1e-7, seed=3), make_req(temperature=0.0, seed=4),
            make_req(top_k=1, seed=5), make_req(temperature=0, top_p=0.5, seed=6)]
    info = info_for(reqs)
    assert info.is_all_greedy
    out = sampler(logits, info)
    assert torch.equal(out.next_token_ids, logits.argmax(-1))
    # Mixed batch: greedy rows still argmax.
    reqs.append(make_req(temperature=1.0, seed=7))
    info = info_for(reqs)
    assert not info.is_all_greedy
    out = sampler(torch.cat([logits, torch.randn(1, V)]), info)
    assert torch.equal(out.next_token_ids[:6], logits.argmax(-1))


# ---------------------------------------------------------------------------- statistics

N_SEEDS = 2000


def _sample_many(row: torch.Tensor, **params) -> torch.Tensor:
    reqs = [make_req(seed=s, **params) for s in range(N_SEEDS)]
    return sampler(row.expand(N_SEEDS, -1).clone(), info_for(reqs)).next_token_ids


def _assert_matches(ids: torch.Tensor, expected: torch.Tensor) -> None:
    counts = torch.bincount(ids, minlength=expected.numel()).double()
    allowed = expected > 0
    assert counts[~allowed].sum() == 0, f"filtered tokens sampled: {counts}"
    exp = expected[allowed].double() / expected.sum() * ids.numel()
    chi2 = float(((counts[allowed] - exp) ** 2 / exp).sum())
    df = int(allowed.sum()) - 1
    # Wilson–Hilferty 99.99% quantile of chi2(df): deterministic seeds, generous bound.
    z = 3.72
    bound = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3 if df > 0 else 0.0
    assert chi2 <= bound, f"chi2={chi2:.1f} > {bound:.1f}; counts={counts.tolist()}"


def test_plain_temperature_distribution() -> None:
    row = torch.log(torch.tensor([0.05, 0.1, 0.15, 0.2, 0.5] + [1e-9] * (V - 5)))
    ids = _sample_many(row, temperature=0.7)
    p = torch.softmax(row / 0.7, -1)
    p[5:] = 0.0  # ~1e-13 each: never drawn in 2000 tries
    _assert_matches(ids, p)


def test_top_p_keeps_minimal_prefix() -> None:
    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05] + [0.0] * (V - 5)) + 1e-12
    row = torch.log(probs)
    ids = _sample_many(row, top_p=0.8)  # 0.4+0.3 = 0.7 < 0.8 → third token needed
    expected = torch.zeros(V)
    expected[:3] = probs[:3]
    _assert_matches(ids, expected)


def test_top_k_distribution() -> None:
    probs = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15] + [0.0] * (V - 5)) + 1e-12
    ids = _sample_many(torch.log(probs), top_k=2)
    expected = torch.zeros(V)
    expected[[1, 3]] = probs[[1, 3]]
    _assert_matches(ids, expected)


def test_min_p_distribution() -> None:
    probs = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05] + [0.0] * (V - 5)) + 1e-12
    ids = _sample_many(torch.log(probs), min_p=0.25)  # threshold 0.125
    expected = torch.zeros(V)
    expected[:3] = probs[:3]
    _assert_matches(ids, expected)


def test_uniform_noise_is_uniform_and_in_range() -> None:
    u = seeded_uniform(torch.arange(4000), torch.zeros(4000, dtype=torch.int64), V)
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005
    # Tokens and steps are decorrelated.
    assert float(torch.corrcoef(u.T).fill_diagonal_(0).abs().max()) < 0.08
    u2 = seeded_uniform(torch.arange(4000), torch.ones(4000, dtype=torch.int64), V)
    assert abs(float(torch.corrcoef(torch.stack([u[:, 0], u2[:, 0]]))[0, 1])) < 0.08
    # Huge and negative seeds are fine.
    seeds = torch.tensor([-1, 2**63 - 1, -(2**63)], dtype=torch.int64)
    u3 = seeded_uniform(seeds, torch.zeros(3, dtype=torch.int64), V)
    assert float(u3.min()) > 0 and float(u3.max()) < 1


# ---------------------------------------------------------------------------- reproducibility


def test_seed_reproducible_across_batches() -> None:
    torch.manual_seed(1)
    rows = {s: torch.randn(V) * 0.3 for s in (11, 22, 33, 44, 55)}
    params = {11: dict(temperature=1.0), 22: dict(top_p=0.9), 33: dict(top_k=5, temperature=1.3),
              44: dict(min_p=0.05), 55: dict(temperature=0.0)}

    def run(order, outputs_len=3):
        reqs = [make_req(seed=s, output_ids=[0] * outputs_len, **params[s]) for s in order]
        out = sampler(torch.stack([rows[s] for s in order]), info_for(reqs))
        return dict(zip(order, out.next_token_ids.tolist())), dict(zip(order, out.next_token_logprobs.tolist()))

    a, la = run([11, 33])
    b, lb = run([44, 33, 55, 11, 22])
    c, lc = run([22, 11])
    assert a[11] == b[11] == c[11] and a[33] == b[33] and b[22] == c[22]
    assert la[11] == pytest.approx(lb[11]) and la[33] == pytest.approx(lb[33])
    # The step is part of the noise: across steps the same seed explores.
    draws = {run([11], outputs_len=k)[0][11] for k in range(12)}
    assert len(draws) > 2


def test_explicit_steps_argument() -> None:
    reqs = [make_req(seed=9, output_ids=[1, 2]), make_req(seed=10)]
    info = info_for(reqs)
    logits = torch.zeros(2, V)
    x = sampler(logits, info).next_token_ids
    info2 = info_for([make_req(seed=9), make_req(seed=10, output_ids=[1, 2])])
    y = sampler(logits, info2, torch.tensor([2, 0])).next_token_ids
    assert torch.equal(x, y)


# ---------------------------------------------------------------------------- penalties


def _reference_penalties(logits: torch.Tensor, reqs, eos) -> torch.Tensor:
    out = logits.clone()
    for i, r in enumerate(reqs):
        sp = r.sampling_params
        row = out[i]
        seen = set(r.origin_input_ids) | set(r.output_ids)
        for t in seen:
            rp = sp.repetition_penalty
            row[t] = row[t] / rp if row[t] > 0 else row[t] * rp
        for t in set(r.output_ids):
            row[t] -= sp.frequency_penalty * r.output_ids.count(t) + sp.presence_penalty
        for t, b in sp.logit_bias_items():
            row[t] += b
        if len(r.output_ids) < sp.min_new_tokens:
            for t in set(eos) | sp.stop_token_ids:
                row[t] = float("-inf")
    return out


def _penalty_reqs():
    return [
        make_req(seed=1, input_ids=[1, 2, 2], output_ids=[3, 3, 4], frequency_penalty=0.5,
                 presence_penalty=0.25),
        make_req(seed=2, input_ids=[5, 6], output_ids=[6, 7], repetition_penalty=1.5),
        make_req(seed=3, output_ids=[1], min_new_tokens=3, stop_token_ids=[9]),
        make_req(seed=4, output_ids=[8, 8, 8, 2], frequency_penalty=-1.0, repetition_penalty=0.8,
                 logit_bias={"4": 2.0, 5: -1.5}),
        make_req(seed=5, output_ids=[1, 2, 3], min_new_tokens=3),  # reached: no masking
        make_req(seed=6, output_ids=[0, 1]),
    ]


def test_penalties_match_reference() -> None:
    torch.manual_seed(2)
    reqs = _penalty_reqs()
    logits = torch.randn(len(reqs), V) * 2
    info = info_for(reqs, eos=[0])
    got = apply_penalties(logits.clone(), info)
    want = _reference_penalties(logits, reqs, eos=[0])
    assert_close(got, want)
    assert torch.isinf(got[2, [0, 9]]).all() and not torch.isinf(got[4]).any()


def test_no_penalties_no_state() -> None:
    info = info_for([make_req(), make_req(temperature=0.5)])
    assert info.penalizer is None
    logits = torch.randn(2, V)
    assert torch.equal(apply_penalties(logits.clone(), info), logits)


def test_min_new_tokens_masks_eos_until_reached() -> None:
    info = info_for([make_req(seed=0, min_new_tokens=2, temperature=0.0)], eos=[7])
    logits = torch.zeros(1, V)
    logits[0, 7] = 10.0
    for step in range(3):
        out = sampler(apply_penalties(logits.clone(), info), info)
        assert (int(out.next_token_ids) == 7) == (step >= 2)
        info.cumulate_output_tokens(out.next_token_ids)


def test_incremental_counts_filter_merge_equal_rebuild() -> None:
    """Keeping one info across steps (cumulate/filter/merge) equals rebuilding from reqs."""
    torch.manual_seed(3)
    reqs = _penalty_reqs()
    a_reqs, b_reqs = reqs[:4], reqs[4:]
    info = info_for(a_reqs, eos=[0])
    for _ in range(3):
        logits = apply_penalties(torch.randn(len(a_reqs), V), info)
        ids = sampler(logits, info).next_token_ids
        info.cumulate_output_tokens(ids)
        for r, t in zip(a_reqs, ids.tolist()):
            r.output_ids.append(t)
    info.filter([3, 0, 2])
    info.merge(info_for(b_reqs, eos=[0]))
    kept = [a_reqs[3], a_reqs[0], a_reqs[2]] + b_reqs
    rebuilt = info_for(kept, eos=[0])
    logits = torch.randn(len(kept), V)
    assert_close(apply_penalties(logits.clone(), info),
                               apply_penalties(logits.clone(), rebuilt))
    assert torch.equal(info.steps, rebuilt.steps) and torch.equal(info.seeds, rebuilt.seeds)
    assert torch.equal(sampler(logits, info).next_token_ids, sampler(logits, rebuilt).next_token_ids)
    # Merging into a penalty-free batch and filtering everything away.
    plain = info_for([make_req(seed=42)])
    plain.merge(rebuilt)
    assert plain.penalizer is not None and len(plain) == len(kept) + 1
    plain.filter([0])
    assert plain.penalizer is None and not plain.need_top_p_sampling


def test_cumulate_with_mask_skips_rows() -> None:
    info = info_for([make_req(seed=1, frequency_penalty=1.0), make_req(seed=2, frequency_penalty=1.0)])
    info.cumulate_output_tokens(torch.tensor([3, 4]), mask=torch.tensor([True, False]))
    assert info.steps.tolist() == [1, 0]
    assert info.penalizer.output_counts[0, 3] == 1 and info.penalizer.output_counts[1].sum() == 0


# ---------------------------------------------------------------------------- logprobs


def test_logprobs_semantics() -> None:
    torch.manual_seed(4)
    logits = torch.randn(3, V)
    reqs = [make_req(temperature=0.0, seed=1), make_req(temperature=0.5, seed=2),
            make_req(temperature=2.0, top_k=3, seed=3)]
    out = sampler(logits, info_for(reqs))
    ids = out.next_token_ids
    assert int(ids[0]) == int(logits[0].argmax())
    want = torch.stack([
        torch.log_softmax(logits[0], -1)[ids[0]],
        torch.log_softmax(logits[1] / 0.5, -1)[ids[1]],
        torch.log_softmax(logits[2] / 2.0, -1)[ids[2]],  # before top-k filtering
    ])
    assert_close(out.next_token_logprobs, want)
    # All-greedy fast path and tuple unpacking.
    g_ids, g_lp = sampler(logits, info_for([make_req(temperature=0.0)] * 3))
    assert_close(g_lp, torch.log_softmax(logits, -1).gather(1, g_ids[:, None]).view(-1))


def test_greedy_logprobs_only_when_some_request_asks() -> None:
    """An all-greedy batch nobody asked logprobs of skips them (same ids); they come back as
    soon as one row asks, through filter and merge too."""
    torch.manual_seed(5)
    logits = torch.randn(4, V)

    def req(lp: bool):
        r = make_req(temperature=0.0)
        r.return_logprob = lp
        return r

    quiet = info_for([req(False) for _ in range(4)])
    ids, lp = sampler(logits, quiet)
    assert lp is None and torch.equal(ids, logits.argmax(-1))
    mixed = info_for([req(False), req(True), req(False), req(False)])
    ids2, lp2 = sampler(logits, mixed)
    assert torch.equal(ids2, ids)
    assert_close(lp2, torch.log_softmax(logits, -1).gather(1, ids[:, None]).view(-1))
    mixed.filter([0, 2])
    assert sampler(logits[[0, 2]], mixed).next_token_logprobs is None
    quiet.merge(info_for([req(True)]))
    assert sampler(torch.randn(5, V), quiet).next_token_logprobs is not None
    # Rows of unknown preference (built without from_reqs' flags) keep getting logprobs.
    quiet.logprob_rows = []
    assert quiet.need_token_logprobs


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_noise_identical_on_cuda() -> None:
    seeds = torch.tensor([0, 7, -1, 2**62 + 5], dtype=torch.int64)
    steps = torch.tensor([0, 3, 9, 100], dtype=torch.int64)
    cpu = seeded_uniform(seeds, steps, 1000)
    gpu = seeded_uniform(seeds.cuda(), steps.cuda(), 1000).cpu()
    assert torch.equal(cpu, gpu)
    reqs = [make_req(seed=s, top_p=0.9) for s in range(8)]
    logits = torch.randn(8, V)
    a = sampler(logits, info_for(reqs)).next_token_ids
    b = sampler(logits.cuda(), SamplingBatchInfo.from_reqs(reqs, V, "cuda")).next_token_ids.cpu()
    assert torch.equal(a, b)
