"""select scores only each choice's own tokens; the three choice methods."""
from __future__ import annotations

import pytest

import sglite
from fake_runtime import FakeBackend, FakeModel
from sglite.protocol.choices import (
    greedy_token_selection, token_length_normalized, unconditional_likelihood_normalized,
)

# Context tokens get a very low logprob: if they leaked into a score we would see it.
COND = {" yes": -0.1, " no": -2.0, " apple": -3.0, " apricot": -0.2, "yes": -5.0, "no": -5.0,
        " red": -0.2, " car": -3.0, " blue": -0.5, " green": -0.3, " sky": -0.1, " today": -0.1}
UNCOND = {" red": -0.2, " car": -0.5, " blue": -3.0, " green": -0.3, " sky": -0.1, " today": -0.1}


def table_logprob(prev, tok):
    # "Q" in the context marks a conditional query; input_ids-only requests lack it.
    table = COND if "Q" in prev else UNCOND
    return table.get(tok, -9.0)


@pytest.fixture
def sel_model():
    return FakeModel(logprob_fn=table_logprob)


def _run_select(model, context, choices, method=token_length_normalized):
    @sglite.function
    def f(s):
        s += context
        s += sglite.select("c", choices=choices, choices_method=method)

    state = f.run(backend=FakeBackend(model))
    return state, state["c"], state.get_meta_info("c")


def test_scores_only_choice_tokens(sel_model):
    state, choice, meta = _run_select(sel_model, "Q: ok?\nA:", [" yes", " no"])
    assert choice == " yes"
    assert meta["normalized_prompt_logprobs"] == [-0.1, -2.0]
    assert [[t[2] for t in toks] for toks in meta["input_token_logprobs"]] == [[" yes"], [" no"]]
    assert state.text() == "Q: ok?\nA: yes"
    req = sel_model.requests[0]
    assert req["text"] == ["Q: ok?\nA:", "Q: ok?\nA: yes", "Q: ok?\nA: no"]
    assert req["sampling_params"] == {"max_new_tokens": 0, "temperature": 0}
    assert req["return_logprob"] is True and req["logprob_start_len"] == 0
    assert len(sel_model.requests) == 1  # one round trip


def test_context_with_trailing_space(sel_model):
    # tok("Q: ") ends with " ", tok("Q: yes") ends with " yes": the merged token is scored.
    _, choice, meta = _run_select(sel_model, "Q: ", ["yes", "no"])
    assert choice == "yes"
    assert meta["normalized_prompt_logprobs"] == [-0.1, -2.0]
    assert [[t[2] for t in toks] for toks in meta["input_token_logprobs"]] == [[" yes"], [" no"]]


def test_choice_merging_with_last_context_token(sel_model):
    state, choice, meta = _run_select(sel_model, "Q fruit: ap", ["ple", "ricot"])
    assert choice == "ricot"
    assert [[t[2] for t in toks] for toks in meta["input_token_logprobs"]] == [[" apple"], [" apricot"]]
    assert state.text() == "Q fruit: apricot"


def test_empty_context_does_not_score_bos():
    model = FakeModel(logprob_fn=lambda prev, tok: -1.0 if tok == "yes" else -4.0)
    _, choice, meta = _run_select(model, "", ["yes", "no"])
    assert choice == "yes"
    assert meta["normalized_prompt_logprobs"] == [-1.0, -4.0]
    assert model.requests[0]["text"] == ["yes", "no"]  # no empty-prompt request


# Designed so that the three methods pick three different choices:
#   A = " red car":        cond [-0.2, -3.0] mean -1.6 ; uncond [-0.2, -0.5] -> diff mean -1.25
#   B = " blue":           cond [-0.5]       mean -0.5 ; uncond [-3.0]       -> diff mean +2.5
#   C = " green sky today": cond [-0.3, -0.1, -0.1] mean -0.1667 ; uncond same -> diff 0
CHOICES = [" red car", " blue", " green sky today"]


def test_methods_disagree_as_designed_end_to_end(sel_model):
    assert _run_select(sel_model, "Q: pick", CHOICES)[1] == " green sky today"
    assert _run_select(sel_model, "Q: pick", CHOICES, greedy_token_selection)[1] == " red car"
    model = FakeModel(logprob_fn=table_logprob)
    _, choice, meta = _run_select(model, "Q: pick", CHOICES, unconditional_likelihood_normalized)
    assert choice == " blue"
    assert meta["normalized_unconditional_prompt_logprobs"] == pytest.approx([-1.25, 2.5, 0.0])
    uncond_req = model.requests[-1]
    assert uncond_req["input_ids"][0][0] == 1  # BOS id prepended, then the choice tokens only
    assert [len(ids) for ids in uncond_req["input_ids"]] == [3, 2, 4]


def _mock(values):
    return [[lp, i, None] for i, lp in enumerate(values)]


def _decide(method, cond, uncond=None):
    normalized = [sum(v) / len(v) for v in cond]
    return method(
        choices=["A", "B", "C"][: len(cond)],
        normalized_prompt_logprobs=normalized,
        input_token_logprobs=[_mock(v) for v in cond],
        output_token_logprobs=[[] for _ in cond],
        unconditional_token_logprobs=None if uncond is None else [_mock(v) for v in uncond],
    )


def test_choice_methods_on_mock_logprobs():
    cond = [[-0.2, -3.0], [-0.5], [-0.3, -0.1, -0.1]]
    uncond = [[-0.2, -0.5], [-3.0], [-0.3, -0.1, -0.1]]
    assert _decide(token_length_normalized, cond).decision == "C"
    greedy = _decide(greedy_token_selection, cond)
    assert greedy.decision == "A"
    assert greedy.meta_info["greedy_logprob_matrix"][1] == [-0.5, -0.5, -0.5]  # padded with its mean
    assert _decide(unconditional_likelihood_normalized, cond, uncond).decision == "B"


def test_greedy_padding_and_ties():
    # Same first token; B ends and is padded with its mean (-0.2) which beats A's -0.3.
    assert _decide(greedy_token_selection, [[-0.2, -0.3], [-0.2]]).decision == "B"
    # A full tie goes to the first choice.
    assert _decide(greedy_token_selection, [[-1.0], [-1.0]]).decision == "A"
    assert _decide(token_length_normalized, [[-1.0], [-1.0]]).decision == "A"


def test_unconditional_treats_missing_first_logprob_as_zero():
    d = unconditional_likelihood_normalized(
        choices=["A", "B"], normalized_prompt_logprobs=[-1.0, -2.0],
        input_token_logprobs=[_mock([-1.0]), _mock([-2.0])], output_token_logprobs=[[], []],
        unconditional_token_logprobs=[[[None, 0, None]], [[-5.0, 1, None]]])
    assert d.decision == "B"  # -2 - (-5) = 3 beats -1 - 0


def test_select_validation():
    with pytest.raises(ValueError):
        sglite.select("x", choices=[])
    with pytest.raises(ValueError):
        sglite.select("x", choices=["a", ""])
    with pytest.raises(ValueError):
        sglite.select("x", choices=["a"], temperature=0.7)
    assert isinstance(sglite.gen("x", choices=["a", "b"]), sglite.lang.ir.SglSelect)
