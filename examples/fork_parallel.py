"""Skeleton of thought: write a few short tips, expand each one in parallel with fork, summarize.

    python examples/fork_parallel.py [--url http://127.0.0.1:30000]

``s.fork(n)`` makes n branches that share the text so far (and its KV cache, so the shared
prompt is computed once); their gens run concurrently and are batched by the runtime.
``join()`` gathers each branch's variables back into ``s`` as lists.
"""
from __future__ import annotations

import time

from _common import connect, parse_args, rule

import sglite


@sglite.function
def tips_and_details(s, topic, num_tips=3, max_tokens=32):
    s += sglite.system("You are a helpful assistant.")
    s += sglite.user(f"Give me {num_tips} short tips about {topic}.")
    # 1. The skeleton: one line per tip, written one after the other.
    with s.assistant():
        for i in range(num_tips):
            s += f"{i + 1}. " + sglite.gen(f"tip_{i}", max_tokens=16, stop="\n") + "\n"

    # 2. Expand every tip at the same time: one branch per tip, all sharing the text above.
    forks = s.fork(num_tips)
    for i, f in enumerate(forks):
        f += sglite.user(f"Explain tip {i + 1} in one paragraph.")
        f += sglite.assistant(sglite.gen("detail", max_tokens=max_tokens))
    forks.join()  # s["detail"] is now a list: one answer per branch, in branch order

    # 3. Back in the main stream: hand the expansions over and ask for a summary.
    details = "\n".join(f"Tip {i + 1}: {d}" for i, d in enumerate(s["detail"]))
    s += sglite.user(f"Here are the tips in detail:\n{details}\nSummarize them in one sentence.")
    s += sglite.assistant(sglite.gen("summary", max_tokens=max_tokens))


def main() -> None:
    args = parse_args(__doc__)
    with connect(args):
        t0 = time.perf_counter()
        state = tips_and_details.run("staying healthy", max_tokens=args.max_tokens, temperature=0)
        state.sync()
        elapsed = time.perf_counter() - t0

        rule("skeleton (sequential)")
        for i in range(3):
            print(f"{i + 1}.{state[f'tip_{i}']}")
        rule("expanded in parallel (fork/join)")
        for i, detail in enumerate(state["detail"]):
            print(f"tip {i + 1}: {detail.strip()}")
        rule("summary")
        print(state["summary"])
        print(f"\n(program ran in {elapsed:.2f} s; the {len(state['detail'])} expansions were batched)")
    print("\nfork_parallel done")


if __name__ == "__main__":  # required: the Engine spawns processes
    main()
