"""sglite.protocol on its own: the stream state machine and select as requests + decision.

The interpreter and the server's program executor both drive these, so their behaviour is
pinned here without either driver (the drivers' parity is tests/e2e/test_compiled_programs.py).
"""
from __future__ import annotations

import pytest

from sglite.protocol.chat_template import ChatTemplate
from sglite.protocol.choices import token_length_normalized, unconditional_likelihood_normalized
from sglite.protocol.graph_nodes import Fill, Gen, RoleBegin, RoleEnd, VarBegin
from sglite.protocol.select import (
    align_scores, method_by_name, scoring_request, select_decision, unconditional_request,
)
from sglite.protocol.stream_state import StreamText, gathered_names, static_prefix

TEMPLATE = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}")


def test_roles_messages_and_var_capture():
    st = StreamText()
    assert st.role_begin("user", TEMPLATE) == "<user>"
    st.var_begin("q", tag="node-3")
    st.append(" hi")
    assert st.var_end("q") == (" hi", "node-3")
    assert st.var_end("never-begun") == ("", None)
    assert st.role_end("user", TEMPLATE) == "</user>"
    assert st.text == "<user> hi</user>"
    assert st.messages == [{"role": "user", "content": "hi"}]
    with pytest.raises(AssertionError, match="ends but the open role"):
        st.role_end("assistant", TEMPLATE)
    st.role_begin("assistant", TEMPLATE)
    with pytest.raises(AssertionError, match="cannot nest"):
        st.role_begin("user", TEMPLATE)


def test_fork_copies_and_since_fork():
    st = StreamText()
    st.role_begin("user", TEMPLATE)
    st.role_image("AAAA")
    child = st.fork()
    child.append(" branch")
    child.role_end("user", TEMPLATE)
    assert st.text == "<user>" and st.messages == [] and st.cur_role == "user"  # the parent is untouched
    assert child.since_fork() == " branch</user>"
    assert child.messages[0]["content"][0] == {"type": "text", "text": "branch"}
    assert child.messages[0]["content"][1]["image_url"]["url"].endswith("AAAA")


def test_static_prefix_stops_at_the_first_model_call():
    nodes = [RoleBegin(id=0, role="user"), Fill(id=1, text="Q"), VarBegin(id=2, name="v"),
             RoleEnd(id=3, role="user"), Gen(id=4, name="a"), Fill(id=5, text="after")]
    assert static_prefix(nodes, TEMPLATE) == "<user>Q</user>"


def _resp(tokens):
    return {"meta_info": {"input_token_logprobs": tokens, "prompt_tokens": len(tokens)}}


def test_select_requests_then_decision():
    req = scoring_request("Q:", [" a", " b"], 0.0)
    assert req["text"] == ["Q:", "Q: a", "Q: b"] and req["sampling_params"]["max_new_tokens"] == 0
    ctx = [[None, 1, "<s>"], [-1.0, 7, "Q:"]]
    responses = [_resp(ctx), _resp(ctx + [[-0.5, 8, " a"]]), _resp(ctx + [[-2.0, 9, " b"], [-2.0, 10, "!"]])]
    scores = align_scores("Q:", [" a", " b"], responses, "<s>")
    assert scores.starts == [2, 2] and scores.bos_id == 1  # only the choices' own tokens are scored
    decision = select_decision([" a", " b"], token_length_normalized, scores)
    assert decision.decision == " a" and decision.meta_info["normalized_prompt_logprobs"] == [-0.5, -2.0]
    unc = unconditional_request(scores)
    assert unc["input_ids"] == [[1, 8], [1, 9, 10]]  # BOS, then each choice's tokens
    with pytest.raises(ValueError, match="unconditional"):
        select_decision([" a", " b"], unconditional_likelihood_normalized, scores)
    # " a" is likely anyway (-0.1 unconditioned), " b" is not (-3.0): the normalized winner flips.
    uresp = [_resp([[None, 1, "<s>"], [-0.1, 8, " a"]]), _resp([[None, 1, "<s>"], [-3.0, 9, " b"], [-3.0, 10, "!"]])]
    assert select_decision([" a", " b"], unconditional_likelihood_normalized, scores, uresp).decision == " b"


def test_select_refusals():
    with pytest.raises(ValueError, match="temperature 0"):
        scoring_request("x", ["a"], 0.7)
    with pytest.raises(ValueError, match="at least one choice"):
        scoring_request("x", [], 0.0)
    with pytest.raises(RuntimeError, match="expected 2 responses"):
        align_scores("x", ["a"], [_resp([])], None)
    with pytest.raises(ValueError, match="unknown select method"):
        method_by_name("best_guess")
    assert method_by_name(None) is token_length_normalized


def test_gathered_names_are_new_and_in_first_seen_order():
    assert gathered_names({"q": 1}, [{"q": 1, "b": 2, "a": 3}, {"a": 4, "c": 5}]) == ["b", "a", "c"]
    assert gathered_names([], []) == []
