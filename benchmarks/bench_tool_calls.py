"""Tool-call validity through the real ``openai`` SDK against a local sglite server.

For each tool_choice that constrains the output (``required`` with and without parallel calls,
a named function) and each ``max_tokens`` budget, N sampled requests (temperature 1, seeds
0..N-1); a call is valid when ``finish_reason == "tool_calls"`` and every call's arguments
parse and validate (jsonschema) against the function's ``parameters``.  Also timed: requests
per second, and the shortest budget the server accepts (a smaller one is a 400).

Usage: python benchmarks/bench_tool_calls.py [--n 50] [--out benchmarks/results/tool_calls.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jsonschema
import openai

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sglite_runtime.entrypoints.launcher import launch_server  # noqa: E402

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                            "days": {"type": "integer", "minimum": 1, "maximum": 14}},
           "required": ["city", "unit"], "additionalProperties": False}
SEARCH = {"type": "object", "properties": {"query": {"type": "string"},
                                           "filters": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
          "required": ["query"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "web_search", "parameters": SEARCH}}]
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MSGS = [{"role": "user", "content": "Will it rain in Lisbon this weekend? Look it up."}]
MODES = {"required": dict(tool_choice="required", parallel_tool_calls=True),
         "required_single": dict(tool_choice="required", parallel_tool_calls=False),
         "named": dict(tool_choice={"type": "function", "function": {"name": "get_weather"}})}


def valid(choice) -> bool:
    if choice.finish_reason != "tool_calls" or not choice.message.tool_calls:
        return False
    for call in choice.message.tool_calls:
        try:
            jsonschema.validate(json.loads(call.function.arguments), PARAMS[call.function.name])
        except (ValueError, KeyError, jsonschema.ValidationError):
            return False
    return True


def min_budget(client, model, mode: dict) -> int:
    """Smallest max_tokens the server accepts for this mode (binary search over 400s)."""
    lo, hi = 1, 256
    while lo < hi:
        mid = (lo + hi) // 2
        try:
            client.chat.completions.create(model=model, messages=MSGS, tools=TOOLS, max_tokens=mid, temperature=0,
                                           **mode)
            hi = mid
        except openai.BadRequestError:
            lo = mid + 1
    return lo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=50, help="sampled requests per mode and budget")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "tool_calls.json"))
    args = parser.parse_args()
    server = launch_server(device="cpu", log_level="warning", max_total_tokens=8192, timeout=300)
    try:
        client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=300)
        model = client.models.list().data[0].id
        results = {}
        for name, mode in MODES.items():
            floor = min_budget(client, model, mode)
            rows = []
            for budget in (floor, floor + 8, 128):
                ok, t0 = 0, time.perf_counter()
                for seed in range(args.n):
                    r = client.chat.completions.create(model=model, messages=MSGS, tools=TOOLS, max_tokens=budget,
                                                       temperature=1.0, seed=seed, **mode)
                    ok += valid(r.choices[0])
                rows.append({"max_tokens": budget, "valid": ok, "n": args.n,
                             "req_per_s": args.n / (time.perf_counter() - t0)})
                print(f"{name:16s} max_tokens={budget:4d}: {ok}/{args.n} valid")
            results[name] = {"min_max_tokens": floor, "rows": rows}
    finally:
        server.shutdown()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"model": "sglite-tiny (shipped)", "temperature": 1.0, "results": results}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
