"""Batches: ``run_batch`` runs one program over many inputs concurrently, results in input order.

    python examples/batch.py [--url http://127.0.0.1:30000]

Each program runs on its own thread; the runtime batches their requests together and the
shared system prompt is computed once and then served from the radix (prefix) cache.
"""
from __future__ import annotations

import time

from _common import connect, parse_args, rule

import sglite

COUNTRIES = ["France", "Japan", "Peru", "Kenya", "Canada", "Norway", "India", "Chile", "Egypt", "Spain",
             "Italy", "Brazil", "Greece", "Mexico", "Poland", "Ghana", "Nepal", "Cuba", "Iran", "Fiji"]


@sglite.function
def capital(s, country, max_tokens=16):
    # The same system prompt for every input: after the first program it is a cache hit.
    s += sglite.system("You are a helpful assistant. You answer questions about countries in one sentence.")
    s += sglite.user(f"What is the capital of {country}?")
    s += sglite.assistant(sglite.gen("answer", max_tokens=max_tokens))


def main() -> None:
    args = parse_args(__doc__, max_tokens=16)
    with connect(args) as backend:
        rule(f"run_batch over {len(COUNTRIES)} inputs")
        t0 = time.perf_counter()
        states = capital.run_batch(
            [{"country": c, "max_tokens": args.max_tokens} for c in COUNTRIES],  # one dict per program
            temperature=0,          # defaults for every gen, like run()
            progress_bar=True,      # a tqdm bar, ticking as programs finish
        )
        elapsed = time.perf_counter() - t0
        for country, state in zip(COUNTRIES, states):  # states come back in input order
            print(f"{country:>7} -> {state['answer'].strip()!r}")
        print(f"{len(states)} programs in {elapsed:.2f} s")

        rule("positional tuples work too (one value per parameter)")
        states = capital.run_batch([("Japan", 8), ("Peru", 8)], temperature=0)
        print([s["answer"].strip() for s in states])

        info = backend.get_server_info()
        state = (info.get("internal_states") or [{}])[0]
        if "cache_hit_rate" in state:
            print(f"\nprefix cache hit rate so far: {state['cache_hit_rate']:.0%}")
    print("\nbatch done")


if __name__ == "__main__":  # required: the Engine spawns processes
    main()
