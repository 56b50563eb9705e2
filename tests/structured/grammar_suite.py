"""Constraint suites shared by the structured-generation tests (and end-to-end model tests).

Every regex here means the same under Python's ``re.fullmatch`` and the Rust regex engine
behind outlines-core (no lookaround, ``[0-9]`` rather than ``\\d``).  Every schema is a valid
Draft 2020-12 schema that outlines-core translates; output is checked with ``jsonschema``.
"""

from __future__ import annotations

REGEX_SUITE: list[str] = [
    r"[0-9]+",
    r"-?[0-9]{1,6}",
    r"(0|[1-9][0-9]*)\.[0-9]{2}",
    r"[a-z]{3,8}",
    r"[A-Z][a-z]+ [A-Z][a-z]+",
    r"(yes|no|maybe)",
    r"(red|green|blue|reddish)",
    r"abc",
    r"hello, world!",
    r"[a-z]+@[a-z]+\.(com|org|net)",
    r"[0-9]{3}-[0-9]{3}-[0-9]{4}",
    r"\([0-9]{3}\) [0-9]{3}-[0-9]{4}",
    r"(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1?[0-9]?[0-9])){3}",
    r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    r"([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?",
    r"#[0-9a-fA-F]{6}",
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    r"(true|false)",
    r"https?://[a-z]+(\.[a-z]+)+(/[a-z0-9]+)*",
    r"\[(\d+(, \d+){0,4})?\]".replace(r"\d", "[0-9]"),
    r"[a-z_][a-z0-9_]{0,15} = [0-9]+;",
    r"(ab|cd)*e",
    r"a{2,5}b{0,3}",
    r"x(y|z)?w",
    r"The answer is [0-9]+\.",
    r"\{\"key\": \"[a-z]{1,10}\"\}",
    r"<(b|i|u)>[a-z ]{0,12}</(b|i|u)>",
    r"(Mon|Tue|Wed|Thu|Fri|Sat|Sun)day?",
    r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?",
    r"(\$|€)[0-9]{1,3}(,[0-9]{3})*(\.[0-9]{2})?",
    r"caf(e|é) (au lait|noir)",
    r"日本(語|人)",
    r"[a-z]+( [a-z]+){2}\n",
    r"Step [1-3]: [A-Za-z ]{1,20}\.(\nStep [1-3]: [A-Za-z ]{1,20}\.){0,2}",
    r"(A|B|C|D)",
]

SCHEMA_SUITE: list[dict] = [
    {"type": "string"},
    {"type": "integer"},
    {"type": "boolean"},
    {"type": "null"},
    {"type": "string", "enum": ["alpha", "beta", "gamma", "alphabet"]},
    {"type": "integer", "minimum": 0, "maximum": 150},
    {"type": "integer", "minimum": -50, "maximum": 50},
    {"type": "number", "minimum": 0},
    {"type": "string", "minLength": 2, "maxLength": 5},
    {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"},
    {"type": "string", "format": "date"},
    {"type": "string", "format": "uuid"},
    {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 130}},
        "required": ["name", "age"],
    },
    {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 3},
        },
        "required": ["id", "tags"],
    },
    {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "shade": {"type": "integer", "minimum": 1, "maximum": 9}},
        "required": ["color"],
    },
    {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {"first": {"type": "string", "maxLength": 6}, "last": {"type": "string", "maxLength": 6}},
                "required": ["first", "last"],
            },
            "active": {"type": "boolean"},
        },
        "required": ["user", "active"],
    },
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 4},
    {"type": "array", "items": {"type": "boolean"}, "maxItems": 3},
    {
        "type": "object",
        "properties": {"x": {"type": "number"}, "y": {"type": "number"}, "label": {"type": ["string", "null"], "maxLength": 4}},
        "required": ["x", "y", "label"],
    },
    {
        "$defs": {
            "point": {
                "type": "object",
                "properties": {"x": {"type": "integer", "minimum": 0, "maximum": 99}, "y": {"type": "integer", "minimum": 0, "maximum": 99}},
                "required": ["x", "y"],
            }
        },
        "type": "object",
        "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"],
    },
    {
        "type": "object",
        "properties": {"kind": {"const": "circle"}, "radius": {"type": "number", "minimum": 0}},
        "required": ["kind", "radius"],
    },
    {
        "type": "object",
        "properties": {
            "value": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 5}]},
        },
        "required": ["value"],
    },
    {
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 10},
            "nickname": {"type": "string", "maxLength": 6},
            "score": {"type": "integer", "minimum": 0, "maximum": 100},
        },
        "required": ["name"],
    },
    {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}$"}, "qty": {"type": "integer", "minimum": 1, "maximum": 9}},
                    "required": ["sku", "qty"],
                },
                "minItems": 1,
                "maxItems": 2,
            },
            "paid": {"type": "boolean"},
        },
        "required": ["items", "paid"],
    },
    {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["A", "B", "C", "D"]}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
        "required": ["answer", "confidence"],
    },
]
