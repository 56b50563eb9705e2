"""Structured output: JSON from a schema (a dict or a pydantic model), integers and regexes.

    python examples/json_extraction.py [--url http://127.0.0.1:30000]

``gen(json_schema=...)``, ``gen(regex=...)`` and ``gen_int`` constrain decoding: at every
step the runtime masks the tokens that would break the format, so the output parses even
though the model is tiny. This example checks every output anyway (json.loads, jsonschema,
pydantic, re.fullmatch, int) and exits 1 if one is invalid. It also prints the execution
plan that ``compile()`` makes for a static program.
"""
from __future__ import annotations

import json
import re
import sys
from typing import Annotated

import jsonschema
from pydantic import BaseModel, Field

from _common import connect, parse_args, rule

import sglite

# A JSON schema as a plain dict. Bounded lengths keep the answers short, so that they end
# well within max_tokens (a cut-off JSON document would not parse).
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "city": {"type": "string", "maxLength": 20},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}


# The same kind of thing as a pydantic model: gen(json_schema=Model) uses Model.model_json_schema().
class Book(BaseModel):
    title: str = Field(max_length=30)
    year: int = Field(ge=1000, le=2100)
    tags: list[Annotated[str, Field(max_length=15)]] = Field(max_length=3)


DATE = r"\d{4}-\d{2}-\d{2}"


@sglite.function
def extract_person(s, text):
    s += sglite.user(f"Give me a JSON record of the person in this text: {text}")
    s += sglite.assistant(sglite.gen("person", json_schema=PERSON_SCHEMA, max_tokens=96))


@sglite.function
def describe_book(s, title):
    s += sglite.user(f"Give me a JSON record of the book {title}.")
    s += sglite.assistant(sglite.gen("book", json_schema=Book, max_tokens=128))


@sglite.function
def typed_fields(s, event):
    s += f"Event: {event}\n"
    s += "Number of people: " + sglite.gen_int("people", max_tokens=6) + "\n"
    s += "Date (YYYY-MM-DD): " + sglite.gen("date", regex=DATE, max_tokens=12) + "\n"


@sglite.function
def record_by_hand(s, name):
    """Fixed JSON scaffolding written by the program, only the values generated (SGLang style)."""
    s += f"A JSON record of {name}:\n"
    with s.var_scope("record"):  # everything appended in this block becomes s["record"]
        s += '{"name": "' + name + '", "age": ' + sglite.gen_int("age", max_tokens=4)
        # gen_string is a JSON string literal (escapes allowed, raw control characters not), and
        # one cut short by max_tokens is closed, so the record always parses.
        s += ', "city": ' + sglite.gen_string("city", max_tokens=12) + "}"


def check(label: str, validate) -> bool:
    """Run one validation; print the outcome instead of raising."""
    try:
        value = validate()
    except Exception as e:  # json.JSONDecodeError, ValidationError, ValueError, ...
        print(f"  INVALID {label}: {type(e).__name__}: {str(e).splitlines()[0]}")
        return False
    print(f"  valid {label}: {value!r}")
    return True


def main() -> None:
    args = parse_args(__doc__)
    ok = []
    with connect(args):
        rule("json_schema as a dict")
        state = extract_person.run("Ada Lovelace, 36, lives in London.", temperature=0)
        print("raw:", state["person"])
        ok.append(check("json.loads", lambda: json.loads(state["person"])))
        ok.append(check("jsonschema", lambda: jsonschema.validate(json.loads(state["person"]), PERSON_SCHEMA)
                        or "matches PERSON_SCHEMA"))

        rule("json_schema as a pydantic model (sampled)")
        state = describe_book.run("Dune", temperature=0.7, seed=3)
        print("raw:", state["book"])
        ok.append(check("Book.model_validate_json", lambda: Book.model_validate_json(state["book"])))

        rule("gen_int and regex")
        state = typed_fields.run("a team dinner next spring", temperature=0)
        print(state.text().rstrip())
        ok.append(check("int(people)", lambda: int(state["people"])))
        ok.append(check("date regex", lambda: re.fullmatch(DATE, state["date"]).group(0)))

        rule("var_scope: JSON scaffolding written by the program")
        state = record_by_hand.run("Grace", temperature=0)
        print("raw:", state["record"])
        ok.append(check("json.loads(record)", lambda: json.loads(state["record"])))

        rule("compile(): the plan of a static program (runs nothing)")
        # A program whose structure does not depend on generated values compiles into one graph
        # that the runtime can execute in a single round trip (run(..., compile=True)).
        print(typed_fields.compile(event="a concert").plan())
        state = typed_fields.run("a concert", temperature=0, compile=True)  # the graph, in one call
        print(f"compiled run: people={state['people']!r} date={state['date']!r}")
        ok.append(check("compiled date regex", lambda: re.fullmatch(DATE, state["date"]).group(0)))

    print(f"\njson_extraction done: {sum(ok)}/{len(ok)} outputs valid")
    if not all(ok):
        print("some constrained outputs were invalid: constrained decoding is not working here")
        sys.exit(1)


if __name__ == "__main__":  # required: the Engine spawns processes
    main()
