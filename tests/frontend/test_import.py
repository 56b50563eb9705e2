"""`import sglite` stays light and exposes the public API."""
from __future__ import annotations

import subprocess
import sys

import sglite

PUBLIC = [
    "function", "gen", "gen_int", "gen_string", "select", "image", "system", "user", "assistant",
    "system_begin", "system_end", "user_begin", "user_end", "assistant_begin", "assistant_end",
    "set_default_backend", "flush_cache", "get_server_info", "RuntimeEndpoint",
    "token_length_normalized", "greedy_token_selection", "unconditional_likelihood_normalized",
    "global_config",
]


def test_import_does_not_load_heavy_modules():
    code = ("import sys, sglite; heavy = [m for m in ('torch', 'transformers', 'triton') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_api():
    for name in PUBLIC:
        assert hasattr(sglite, name), name
    assert sglite.__version__ == "0.1.0"
    for lazy in ("Engine", "Runtime", "launch_server"):
        assert lazy in sglite.__all__


def test_no_backend_is_a_clear_error():
    @sglite.function
    def f(s):
        s += "hi" + sglite.gen("x")

    sglite.set_default_backend(None)
    try:
        f.run()
    except ValueError as e:
        assert "set_default_backend" in str(e)
    else:
        raise AssertionError("expected ValueError")
    assert sglite.flush_cache() is False and sglite.get_server_info() is None
