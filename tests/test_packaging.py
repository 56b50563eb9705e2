"""Packaging promises: the frontend imports without the runtime's heavy packages, and our
``kernels`` package is not mistaken by transformers for the hub-kernels integration."""

from __future__ import annotations

import os
import subprocess
import sys


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_import_sglite_does_not_import_torch():
    out = _run("import sys, sglite; print(','.join(m for m in ('torch', 'transformers', 'triton') if m in sys.modules))")
    assert out == ""


def test_transformers_does_not_see_our_kernels_package():
    out = _run("import kernels, transformers.utils as u; print(kernels.__file__); print(u.is_kernels_available())")
    path, available = out.splitlines()
    # Our package (beside sglite_runtime), not some other `kernels`, is the one importable.
    assert os.path.isdir(os.path.join(os.path.dirname(os.path.dirname(path)), "sglite_runtime"))
    assert available == "False"


def test_version_is_below_transformers_kernels_threshold():
    out = _run("import importlib.metadata as m; print(m.version('sglite'))")
    major, minor = (int(x) for x in out.split(".")[:2])
    assert (major, minor) < (0, 18)
