"""Classification with ``select``: the model scores every label and the best one is appended.

    python examples/select_classify.py [--url http://127.0.0.1:30000]

``select`` runs no sampling: it computes the log-probability of each choice's own tokens
after the prompt (one batched prefill that shares the prompt's KV cache) and picks one
with a ``choices_method``. ``s.get_meta_info(name)`` returns the per-choice scores.
"""
from __future__ import annotations

from _common import connect, parse_args, rule

import sglite

# Leading spaces: "The review is" + " positive" tokenizes the way the model saw such text.
LABELS = [" positive", " negative", " neutral"]


@sglite.function
def classify(s, review, method=sglite.token_length_normalized):
    s += sglite.user(f"Is this review positive, negative or neutral?\nReview: {review}")
    s += sglite.assistant("The review is" + sglite.select("label", choices=LABELS, choices_method=method))


@sglite.function
def route(s, question, max_tokens=32):
    """Plain Python control flow on a selected value: the program branches on the label."""
    s += sglite.user(question)
    s += sglite.assistant("This question is about" +
                            sglite.select("topic", choices=[" math", " geography", " Python"]))
    if s["topic"] == " math":  # reading s["topic"] waits for the select
        s += sglite.user("Give the result only.")
    else:
        s += sglite.user("Answer in one sentence.")
    s += sglite.assistant(sglite.gen("answer", max_tokens=max_tokens))


def show(state) -> None:
    """Print the chosen label and every label's score from the select's meta info."""
    meta = state.get_meta_info("label")
    print(f"choice: {state['label']!r}  (method: {meta['choices_method']})")
    for label, score, tokens in zip(LABELS, meta["normalized_prompt_logprobs"], meta["input_token_logprobs"]):
        marker = "<-" if label == state["label"] else ""
        print(f"  {label.strip():>9}: mean logprob {score:7.3f} over {len(tokens)} token(s) {marker}")


def main() -> None:
    args = parse_args(__doc__)
    with connect(args):
        reviews = ["I loved it, the best film of the year!", "Terrible. I want my money back.",
                   "It was a film."]
        for review in reviews:
            rule(review)
            show(classify.run(review))

        rule("the same review with two other choice methods")
        for method in (sglite.greedy_token_selection, sglite.unconditional_likelihood_normalized):
            show(classify.run(reviews[0], method=method))

        rule("branching on a select")
        for q in ["What is 3 + 4?", "What is the capital of Peru?"]:
            state = route.run(q, max_tokens=args.max_tokens, temperature=0)
            print(f"{q} -> topic {state['topic']!r}, answer {state['answer']!r}")
    print("\nselect_classify done")


if __name__ == "__main__":  # required: the Engine spawns processes
    main()
