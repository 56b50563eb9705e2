"""IR nodes: expression algebra and JSON form (for a tracer/compiler)."""
from __future__ import annotations

import json

import pytest

import sglite
from sglite.lang.ir import SglArgument, SglConstantText, SglExprList, SglGen, SglSelect


def test_expression_algebra_is_flat():
    expr = "Q: " + sglite.gen("a", max_tokens=3) + "\n" + sglite.select("b", choices=["x", "y"])
    assert isinstance(expr, SglExprList)
    kinds = [type(e) for e in expr.exprs]
    assert kinds == [SglConstantText, SglGen, SglConstantText, SglSelect]
    role = sglite.user("hi" + sglite.gen("c"))
    assert [type(e).__name__ for e in role.exprs] == ["SglRoleBegin", "SglConstantText", "SglGen", "SglRoleEnd"]


def test_to_dict_is_json():
    expr = "Q: " + sglite.gen("a", max_tokens=3, dtype=int) + sglite.select("b", choices=["x", "y"])
    d = expr.to_dict()
    json.dumps(d)
    assert d["type"] == "SglExprList"
    gen = d["exprs"][1]
    assert gen["type"] == "SglGen" and gen["name"] == "a"
    assert gen["sampling_params"]["max_new_tokens"] == 3 and gen["sampling_params"]["dtype"] == "int"
    assert d["exprs"][2]["choices_method"] == "token_length_normalized"


def test_traced_argument_refuses_formatting():
    arg = SglArgument("question")
    with pytest.raises(TypeError):
        f"{arg}"
    with pytest.raises(TypeError):
        str(arg)


def test_trace_placeholder_is_explicit():
    @sglite.function
    def f(s):
        s += "x"

    try:
        f.trace()
    except NotImplementedError:
        pass


def test_function_requires_s():
    with pytest.raises(AssertionError):
        sglite.function(lambda x: None)
