"""sglite's public frontend surface against SGLang's, name by name.

SGLang's surface comes from ``data/sglang_surface.json`` (always: the test cannot skip)
and, when ``sglang`` is installed (``pip install --no-deps sglang``), from its source too,
so a newer SGLang that adds names fails here until sglite has them or lists them below.
Every SGLang name must exist at the same path in sglite (``sglang.lang.ir.X`` ->
``sglite.lang.ir.X``) unless it is in UNSUPPORTED with the reason.
"""
from __future__ import annotations

import importlib
import inspect
import json
import types

import pytest

import sglite
from sglang_surface import SNAPSHOT, extract, sglang_dir

# name -> why sglite does not have it (the closing note of issue 18 lists these too).
UNSUPPORTED = {
    "sglang.lang.ir.SglVideo": "the runtime takes no video input (sglite.video raises and says so)",
    "sglang.lang.ir.SglConcateAndAppend": "join('concate_and_append') appends the branches' text; "
                                          "there is no KV-cache splicing node to build",
    "sglang.lang.interpreter.run_internal": "a private helper of run_program (call run_program)",
}
# Names that exist but refuse when used, with an error naming the alternative.
REFUSED = {"Anthropic", "LiteLLM", "VertexAI", "Crusoe", "video"}


def _surfaces() -> list[dict]:
    with open(SNAPSHOT) as fh:
        out = [json.load(fh)]
    root = sglang_dir()
    if root is not None:
        out.append(extract(root))
    return out


def _sglite_path(sglang_path: str) -> str:
    return "sglite" + sglang_path[len("sglang"):]


def _resolve(path: str):
    """``a.b.c.Name`` (or ``a.b.Class.method``) -> the object; AttributeError when missing."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise AttributeError(path)


@pytest.mark.parametrize("surface", _surfaces(), ids=lambda s: f"sglang-{s['version']}")
def test_every_sglang_name_exists_in_sglite(surface):
    missing = []
    for module, names in surface["modules"].items():
        for name in names:
            full = f"{module}.{name}"
            if full in UNSUPPORTED:
                continue
            try:
                _resolve(f"{_sglite_path(module)}.{name}")
            except AttributeError:
                missing.append(full)
    for cls, methods in surface["methods"].items():
        for m in methods:
            full = f"{cls}.{m}"
            if full in UNSUPPORTED:
                continue
            # Classes may live in another module of sglite, but must be importable at SGLang's path.
            try:
                _resolve(f"{_sglite_path(cls)}.{m}")
            except AttributeError:
                missing.append(full)
    assert not missing, f"SGLang names sglite lacks (add them or list them in UNSUPPORTED): {missing}"


@pytest.mark.parametrize("surface", _surfaces(), ids=lambda s: f"sglang-{s['version']}")
def test_every_sglang_keyword_is_accepted(surface):
    missing = []
    for qual, params in surface["signatures"].items():
        fn = _resolve(_sglite_path(qual))
        ours = inspect.signature(fn).parameters
        missing += [f"{qual}({p}=)" for p in params if p not in ours and f"{qual}({p}=)" not in UNSUPPORTED]
    assert not missing, f"keywords SGLang's callers pass that sglite rejects: {missing}"


def test_unsupported_list_is_current():
    """A name listed as unsupported that sglite has since gained must leave the list."""
    for full in UNSUPPORTED:
        with pytest.raises(AttributeError):
            _resolve(_sglite_path(full))


def test_positional_order_of_gen_matches_sglang():
    snap = _surfaces()[0]["signatures"]
    for fn in ("gen", "gen_int", "gen_string", "select"):
        theirs = snap[f"sglang.lang.api.{fn}"]
        ours = list(inspect.signature(getattr(sglite, fn)).parameters)
        assert ours[:len(theirs)] == theirs, fn


def test_no_stray_exports():
    public = {n for n in dir(sglite) if not n.startswith("_")
              and not isinstance(getattr(sglite, n), types.ModuleType)}
    assert public <= set(sglite.__all__), public - set(sglite.__all__)
    assert not hasattr(sglite, "Any") and not hasattr(sglite, "annotations")
    sglang_all = set(_surfaces()[0]["modules"]["sglang"]) - {n[len("sglang."):] for n in UNSUPPORTED}
    assert sglang_all <= set(sglite.__all__), sglang_all - set(sglite.__all__)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_names_say_what_to_use(name):
    obj = getattr(sglite, name)
    with pytest.raises(NotImplementedError) as err:
        obj("x", 1) if name == "video" else obj("model")
    assert "not supported" in str(err.value)
    if name != "video":
        assert "sglite.OpenAI" in str(err.value)
