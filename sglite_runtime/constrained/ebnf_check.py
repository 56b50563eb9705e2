"""Refuse EBNF grammars with a rule that can never end (no finite string derives from it).

``root ::= "a" root`` parses and compiles, but no output ever satisfies it, and xgrammar's
``find_jump_forward_string`` (used for jump-forward and the completion plan) then loops
forever in C++ inside the scheduler: one request stalls every other. A CFG whose every rule
is *productive* (derives some finite string) can be completed from any viable prefix, so the
forced string is finite; checking productivity up front is the fix.

The check reads xgrammar's normalized grammar (``Grammar.serialize_json``): rules point to
expressions; an expression is ``[type, length, data...]`` in ``grammar_expr_data`` at
``grammar_expr_indptr[i]``. Types: 0 byte string, 1 character class, 2 class star, 3 empty,
4 rule ref, 5 sequence, 6 choices, 8 repeat ``(rule, min, max)``; a class is
``(negated, lo, hi, lo, hi, ...)`` and matches nothing when empty (``[^\x00-\U0010FFFF]``).
Anything else counts as productive, so an unknown layout can only miss a bad grammar, never
refuse a good one.
"""

from __future__ import annotations

import json
from typing import Any

_CHAR_CLASS, _RULE_REF, _SEQUENCE, _CHOICES, _REPEAT = 1, 4, 5, 6, 8
_MAX_CODEPOINT = 0x10FFFF


def _class_is_empty(args: list[int]) -> bool:
    negated, ranges = args[0], sorted(zip(args[1::2], args[2::2]))
    if not negated:
        return not ranges
    covered = -1  # the highest code point covered so far by the merged ranges
    for lo, hi in ranges:
        if lo > covered + 1:
            return False
        covered = max(covered, hi)
    return covered >= _MAX_CODEPOINT


def unproductive_rules(grammar: Any) -> list[str]:
    """Names of the rules of an ``xgrammar.Grammar`` from which no finite string derives."""
    try:
        data = json.loads(grammar.serialize_json())
        rules = [(r[0], int(r[1])) for r in data["rules"]]
        expr_data, indptr = data["grammar_expr_data"], data["grammar_expr_indptr"]
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return []  # another serialization layout: skip the check rather than guess

    def expr(i: int) -> tuple[int, list[int]]:
        start = indptr[i]
        return expr_data[start], expr_data[start + 2: start + 2 + expr_data[start + 1]]

    productive = [False] * len(rules)

    def ok(i: int) -> bool:
        kind, args = expr(i)
        if kind == _RULE_REF:
            return productive[args[0]]
        if kind == _SEQUENCE:
            return all(ok(j) for j in args)
        if kind == _CHOICES:
            return any(ok(j) for j in args)
        if kind == _REPEAT:
            return args[1] == 0 or productive[args[0]]
        if kind == _CHAR_CLASS:
            return not _class_is_empty(args)
        return True

    try:
        changed = True
        while changed:  # least fixpoint: at most one pass per rule
            changed = False
            for r, (_, body) in enumerate(rules):
                if not productive[r] and ok(body):
                    productive[r] = changed = True
    except (IndexError, TypeError, RecursionError):
        return []
    return [name for (name, _), good in zip(rules, productive) if not good]
