"""Constrained generation: regex / JSON-schema / choice constraints on outlines-core.

See docs/INTERNALS.md, "Constrained generation", for how the scheduler drives these."""

from __future__ import annotations

from sglite_runtime.constrained.base import INVALID, BaseGrammar, InvalidGrammar, is_invalid
from sglite_runtime.constrained.grammar_cache import GrammarCache, make_key
from sglite_runtime.constrained.jump_forward import jump_forward_str, jump_forward_tokens
from sglite_runtime.constrained.outlines_backend import OutlinesGrammar, OutlinesGrammarBackend
from sglite_runtime.constrained.specs import schema_from_pydantic, validate_spec
from sglite_runtime.constrained.vocabulary import build_vocabulary

__all__ = [
    "INVALID",
    "BaseGrammar",
    "GrammarCache",
    "InvalidGrammar",
    "OutlinesGrammar",
    "OutlinesGrammarBackend",
    "build_vocabulary",
    "is_invalid",
    "jump_forward_str",
    "jump_forward_tokens",
    "make_key",
    "schema_from_pydantic",
    "validate_spec",
]
