"""Both packages type-check clean with the ``[tool.mypy]`` settings in pyproject.toml.

mypy keeps an incremental cache in ``.mypy_cache`` (git-ignored), so a rerun only re-checks
changed modules; a cold run (a fresh CI checkout) checks everything once.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mypy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mypy", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=1200)


def test_packages_type_check_clean():
    proc = _mypy()  # files and settings come from pyproject.toml
    assert proc.returncode == 0, f"mypy found errors:\n{proc.stdout}\n{proc.stderr}"
    assert "Success" in proc.stdout


def test_the_checker_reports_a_wrong_annotation(tmp_path):
    # The same settings flag an Optional used as its value type, so a clean run above means something.
    bad = tmp_path / "bad_types.py"
    bad.write_text(textwrap.dedent("""
        from __future__ import annotations


        def name_len(name: str | None) -> int:
            return len(name)
    """))
    proc = _mypy(str(bad))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "bad_types.py:6: error" in proc.stdout and "[arg-type]" in proc.stdout, proc.stdout
