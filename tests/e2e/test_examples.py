"""Every script in examples/ runs to completion on the shipped model and prints what it promises.

Each example is a subprocess (``python examples/NAME.py --max-tokens 8``: quick variants) with
a 120 s timeout; quickstart and the chat example also run with ``--url`` against one server
started by ``sglite.launch_server``. The whole module takes about a minute and a half on CPU.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "examples")
SHIPPED = os.path.join(ROOT, "sglite_runtime", "assets", "sglite-tiny")

pytestmark = pytest.mark.skipif(not os.path.exists(os.path.join(SHIPPED, "model.safetensors")),
                                reason="the shipped model's weights are missing")

# example -> strings its output must contain (section headings and the closing line).
MARKERS = {
    "quickstart": ["greedy (temperature 0)", "seed 1:", "streaming", "answer:", "<|assistant|>",
                   "quickstart done"],
    "multi_turn_chat": ['"role": "system"', '"role": "assistant"', "assistant: ", "multi_turn_chat done"],
    "fork_parallel": ["skeleton", "tip 3:", "summary", "fork_parallel done"],
    "select_classify": ["choice: ", "mean logprob", "greedy_token_selection", "topic ", "select_classify done"],
    "json_extraction": ["valid json.loads", "valid jsonschema", "valid Book.model_validate_json",
                        "valid int(people)", "valid date regex", "wave 1:", "valid json.loads(record)",
                        "valid compiled date regex", "json_extraction done: 7/7"],
    "batch": ["run_batch over 20 inputs", " Fiji -> ", "20 programs in", "batch done"],
}


def run_example(name: str, *extra: str, timeout: float = 120.0) -> str:
    """Run one example; fail with its output unless it exits 0 within ``timeout``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, os.path.join(EXAMPLES, f"{name}.py"), "--max-tokens", "8", *extra]
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{name} did not finish in {timeout:.0f} s; output so far:\n{e.stdout}\n{e.stderr}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{out[-4000:]}"
    return out


def assert_markers(name: str, out: str) -> None:
    missing = [m for m in MARKERS[name] if m not in out]
    assert not missing, f"{name}: missing {missing} in output:\n{out[-4000:]}"


@pytest.mark.parametrize("name", list(MARKERS))
def test_example_on_engine(name):
    assert_markers(name, run_example(name))


@pytest.fixture(scope="module")
def server():
    import sglite

    handle = sglite.launch_server(log_level="error", timeout=180)
    yield handle
    assert handle.shutdown() == 0  # SIGTERM drains and exits cleanly


@pytest.mark.parametrize("name", ["quickstart", "multi_turn_chat"])
def test_example_over_http(server, name):
    out = run_example(name, "--url", server.url)
    assert f"server at {server.url}" in out
    assert_markers(name, out)


def test_examples_are_all_tested():
    scripts = {f[:-3] for f in os.listdir(EXAMPLES) if f.endswith(".py") and not f.startswith("_")}
    assert scripts == set(MARKERS), "add new examples to MARKERS"
