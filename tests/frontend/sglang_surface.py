"""SGLang's public frontend surface, read from its source with ``ast`` (never imported:
``import sglang`` needs torch and its whole dependency tree).

``python tests/frontend/sglang_surface.py`` rewrites ``data/sglang_surface.json`` from the
installed ``sglang`` (``pip install --no-deps sglang``); the parity test compares sglite
with that snapshot, and with the installed package too when there is one.
"""
from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import os
from typing import Any, Optional

SNAPSHOT = os.path.join(os.path.dirname(__file__), "data", "sglang_surface.json")
# Modules whose top-level definitions SGLang's users import; sglite keeps the same paths.
MODULES = ("lang/ir.py", "lang/interpreter.py", "lang/choices.py", "lang/api.py", "lang/global_config.py")
# Classes whose public methods programs call.
CLASSES = {"lang/interpreter.py": ("ProgramState", "ProgramStateGroup", "StreamExecutor"),
           "lang/ir.py": ("SglFunction",)}
# Callables whose keyword arguments programs pass.
SIGNATURES = {"lang/api.py": ("gen", "gen_int", "gen_string", "select", "function", "image",
                              "separate_reasoning", "set_default_backend", "flush_cache", "get_server_info"),
              "lang/ir.py": ("SglFunction.run", "SglFunction.run_batch", "SglFunction.bind",
                             "SglFunction.trace", "SglFunction.cache"),
              "lang/interpreter.py": ("ProgramState.text_iter", "ProgramState.text_async_iter",
                                      "ProgramState.fork", "ProgramState.copy", "ProgramStateGroup.join",
                                      "ProgramState.var_scope", "ProgramState.get_meta_info")}
KEEP_DUNDERS = ("__getitem__", "__setitem__", "__iadd__", "__contains__")


def sglang_dir() -> Optional[str]:
    spec = importlib.util.find_spec("sglang")  # locates the package without running it
    return os.path.dirname(spec.origin) if spec and spec.origin else None


def _module_name(rel: str) -> str:
    return "sglang." + rel[:-3].replace("/", ".")


def _toplevel(tree: ast.Module) -> dict[str, ast.AST]:
    out: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out[node.name] = node
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out[t.id] = node
    return out


def _params(fn: ast.AST) -> list[str]:
    a = fn.args  # type: ignore[attr-defined]
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]
    return [n for n in names if n not in ("self", "s", "cls")]


def extract(root: str) -> dict[str, Any]:
    """The surface of the sglang package at ``root``."""
    with open(os.path.join(root, "__init__.py")) as fh:
        init = ast.parse(fh.read())
    all_names: list[str] = []
    for node in init.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            all_names = [e.value for e in node.value.elts]  # type: ignore[attr-defined]
    surface: dict[str, Any] = {"modules": {"sglang": sorted(all_names)}, "methods": {}, "signatures": {}}
    for rel in MODULES:
        with open(os.path.join(root, rel)) as fh:
            top = _toplevel(ast.parse(fh.read()))
        mod = _module_name(rel)
        surface["modules"][mod] = sorted(n for n in top if not n.startswith("_"))
        for cls in CLASSES.get(rel, ()):
            body = top[cls].body  # type: ignore[attr-defined]
            surface["methods"][f"{mod}.{cls}"] = sorted(
                f.name for f in body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                and (not f.name.startswith("_") or f.name in KEEP_DUNDERS))
        for qual in SIGNATURES.get(rel, ()):
            node = top[qual.split(".")[0]]
            if "." in qual:
                node = next(f for f in node.body  # type: ignore[attr-defined]
                            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) and f.name == qual.split(".")[1])
            surface["signatures"][f"{mod}.{qual}"] = _params(node)
    surface["version"] = importlib.metadata.version("sglang")
    return surface


if __name__ == "__main__":
    root = sglang_dir()
    if root is None:
        raise SystemExit("install sglang first: pip install --no-deps sglang")
    with open(SNAPSHOT, "w") as fh:
        json.dump(extract(root), fh, indent=1, sort_keys=True)
        fh.write("\n")
    print("wrote", SNAPSHOT)
