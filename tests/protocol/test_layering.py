"""The layers: the runtime never imports the client, the protocol never imports torch or the client.

Walks every module's AST (imports inside functions and under TYPE_CHECKING count too), so a
lazy import cannot slip past; the subprocess check proves the protocol also loads nothing heavy.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "triton")


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def test_the_walker_sees_every_kind_of_import(tmp_path):
    # A check that cannot fail is a defect: the walker must see plain, from-, lazy and package imports.
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text("import sglite.lang.api\nfrom sglite import RuntimeEndpoint\n"
                              "def f():\n    from sglite.backend import x\n    import sglite\n")
    names = [n for _, n in _imports(pkg / "m.py")]
    assert {"sglite.lang.api", "sglite.RuntimeEndpoint", "sglite.backend", "sglite"} <= set(names)


def _offending(folder: str, is_bad: Callable[[str], bool]) -> list[str]:
    """``file:line: module`` for every import under ``folder`` that ``is_bad`` rejects."""
    return [f"{path.relative_to(ROOT)}:{line}: {name}"
            for path in sorted((ROOT / folder).rglob("*.py")) for line, name in _imports(path) if is_bad(name)]


def _in(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_runtime_imports_only_the_protocol_from_sglite():
    bad = _offending("sglite_runtime", lambda n: _in(n, "sglite") and not _in(n, "sglite.protocol"))
    assert not bad, "the runtime imports the client:\n" + "\n".join(bad)


def test_runtime_layers_point_one_way():
    # Process entry points (entrypoints/) start and wire the managers; a manager never reaches
    # back into an entry point (it states what it needs from one as a Protocol).
    bad = _offending("sglite_runtime/managers", lambda n: _in(n, "sglite_runtime.entrypoints"))
    assert not bad, "managers/ imports entrypoints/:\n" + "\n".join(bad)


def test_protocol_imports_no_torch_and_no_client():
    bad = _offending("sglite/protocol", lambda n: n.split(".")[0] in HEAVY or _in(n, "sglite_runtime")
                     or (_in(n, "sglite") and n != "sglite" and not _in(n, "sglite.protocol")))
    assert not bad, "sglite.protocol must stay torch-free and client-free:\n" + "\n".join(bad)


def test_protocol_loads_nothing_heavy():
    code = ("import sys, importlib, pkgutil, sglite.protocol as p\n"
            "for m in pkgutil.iter_modules(p.__path__): importlib.import_module('sglite.protocol.' + m.name)\n"
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_runtime_loads_no_client_module():
    # The AST walk sees what the runtime names; this sees what it loads: `import sglite.protocol`
    # runs `sglite/__init__.py`, which must not pull in the interpreter or the backends.
    code = ("import sys\n"
            "import sglite_runtime.managers.program_executor, sglite_runtime.entrypoints.http_server\n"
            "import sglite_runtime.entrypoints.engine, sglite_runtime.managers.scheduler\n"
            "bad = sorted(m for m in sys.modules if m.startswith('sglite.')\n"
            "             and m.split('.')[1] not in ('protocol', 'global_config'))\n"
            "assert 'sglite.protocol.graph' in sys.modules\n"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
