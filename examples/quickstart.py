"""Quickstart: load the shipped tiny model, generate (greedy, sampled, streamed), run a program.

    python examples/quickstart.py                          # in-process sglite.Engine()
    python examples/quickstart.py --url http://127.0.0.1:30000   # a running server

The shipped model (sglite-tiny, 2.2M parameters) writes English-like text; its facts are
often wrong. It is here to show the API, not to give good answers.
"""
from __future__ import annotations

import json
import time

from _common import parse_args, rule

import sglite


def generate(client, prompt, params, stream=False):
    """``Engine.generate`` in-process, or the same call as ``POST /generate`` on a server.

    Both return ``{"text", "output_ids", "meta_info"}`` per prompt. Streams yield chunks;
    the Engine's chunks carry the NEW text only, the server's SSE chunks the text so far,
    so this helper turns the latter into deltas too.
    """
    if isinstance(client, sglite.Engine):
        return client.generate(prompt, params, stream=stream)
    import requests

    body = {"text": prompt, "sampling_params": params, "stream": stream}
    resp = requests.post(client + "/generate", json=body, stream=stream, timeout=60)
    resp.raise_for_status()
    if not stream:
        return resp.json()

    def deltas():
        seen = 0
        for line in resp.iter_lines(decode_unicode=True):
            if not line or not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            chunk = json.loads(line[len("data:"):])
            yield dict(chunk, text=chunk["text"][seen:])
            seen = len(chunk["text"])

    return deltas()


# A program: a Python function over a state `s`. `+=` appends text or a generation;
# roles use the model's own chat template; `s["answer"]` reads a generated variable.
@sglite.function
def chat(s, question, max_tokens=32):
    s += sglite.system("You are a helpful assistant.")
    s += sglite.user(question)
    s += sglite.assistant(sglite.gen("answer", max_tokens=max_tokens))


def main() -> None:
    args = parse_args(__doc__)
    t0 = time.perf_counter()
    if args.url:
        client = args.url.rstrip("/")
        backend = sglite.RuntimeEndpoint(client)  # for the program below
        print(f"[backend] server at {client}")
    else:
        client = sglite.Engine(model_path=args.model_path)  # shipped sglite-tiny by default
        backend = client  # programs accept the Engine itself as their backend
        print(f"[backend] in-process Engine: {client.server_args.model_path}")
    print(f"ready in {time.perf_counter() - t0:.1f} s")

    prompts = ["The capital of France is", "def add(a, b):", '{"name": "Ada", "age":']

    rule("greedy (temperature 0): the same text every run")
    greedy = {"max_new_tokens": args.max_tokens, "temperature": 0}
    for prompt, out in zip(prompts, generate(client, prompts, greedy)):  # a list in, a list out, in order
        meta = out["meta_info"]
        print(f"{prompt!r} -> {out['text']!r}  [{meta['completion_tokens']} tokens, "
              f"finish={meta['finish_reason']['type']}]")

    rule("sampled (temperature 0.8, top_p 0.95, seeded)")
    sampled = {"max_new_tokens": args.max_tokens, "temperature": 0.8, "top_p": 0.95}
    for seed in (1, 2, 3):
        out = generate(client, "Once upon a time", dict(sampled, seed=seed))
        print(f"seed {seed}: {out['text']!r}")

    rule("streaming: text arrives token by token")
    print("Once upon a time", end="", flush=True)
    for chunk in generate(client, "Once upon a time", dict(greedy, ignore_eos=True), stream=True):
        print(chunk["text"], end="", flush=True)
    print()

    rule("a program (@sglite.function)")
    state = chat.run("What is the capital of France?", max_tokens=args.max_tokens,
                     temperature=0, backend=backend)
    print("answer:", repr(state["answer"]))
    print("full text:\n" + state.text())

    if isinstance(client, sglite.Engine):
        client.shutdown()  # stops the runtime's processes (also done at interpreter exit)
    print("\nquickstart done")


if __name__ == "__main__":  # required: the Engine spawns processes
    main()
