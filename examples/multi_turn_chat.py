"""Multi-turn chat: system/user/assistant roles, several turns, then the OpenAI-style messages.

    python examples/multi_turn_chat.py [--url http://127.0.0.1:30000]

Roles are rendered with the model's own chat template (sglite-tiny: <|system|>, <|user|>,
<|assistant|>, closed by <|end|>), and each turn reuses the KV cache of the turns before it.
"""
from __future__ import annotations

import json

from _common import connect, parse_args, rule

import sglite


@sglite.function
def chat(s, turns, max_tokens=32):
    """One system prompt, then a user/assistant exchange per question in ``turns``."""
    s += sglite.system("You are a helpful assistant. Answer in one sentence.")
    for i, question in enumerate(turns):
        s += sglite.user(question)
        # Each answer is its own variable; the assistant turn ends at the model's <|end|>.
        s += sglite.assistant(sglite.gen(f"answer_{i}", max_tokens=max_tokens))


@sglite.function
def chat_blocks(s, question, max_tokens=32):
    """The same with ``with s.user():`` blocks: everything appended inside joins that message."""
    s += sglite.system("You are a helpful assistant.")
    with s.user():
        s += "Please answer briefly. "
        s += question
    with s.assistant():
        s += sglite.gen("answer", max_tokens=max_tokens, temperature=0.7, seed=7)


def main() -> None:
    args = parse_args(__doc__)
    with connect(args):
        turns = ["Hello!", "What is 3 + 4?", "What is the capital of Japan?"]
        state = chat.run(turns, max_tokens=args.max_tokens, temperature=0)

        rule("the conversation")
        for i, q in enumerate(turns):
            print(f"user:      {q}")
            print(f"assistant: {state[f'answer_{i}']}")

        rule("s.messages() (OpenAI format)")
        print(json.dumps(state.messages(), indent=2))

        rule("the raw prompt text the model saw")
        print(state.text())

        rule("with-block roles, sampled")
        state = chat_blocks.run("Name a Python keyword.", max_tokens=args.max_tokens)
        print(json.dumps(state.messages(), indent=2))
    print("\nmulti_turn_chat done")


if __name__ == "__main__":  # required: the Engine spawns processes
    main()
