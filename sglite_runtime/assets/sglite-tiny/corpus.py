"""Seeded, download-free training corpus for sglite-tiny (used by ``train.py``).

Four sources, all reproducible from the Python install alone:

* ``pydoc``: the topic texts behind ``help('topic')`` (``pydoc_data.topics``);
* ``docstrings``: module, class and function docstrings of a fixed list of stdlib modules;
* ``chat``: generated conversations (greetings, arithmetic, capitals, Python keywords,
  JSON records) rendered with the shipped chat template;
* ``json``: generated JSON records and arrays rendered with ``json.dumps``.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import re

SPECIAL_TOKENS = ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")

# Jinja chat template; mirrors render_chat() below, which builds the training data.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unsupported role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

STDLIB_MODULES = (
    "abc", "argparse", "array", "ast", "base64", "bisect", "calendar", "collections",
    "collections.abc", "configparser", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "enum", "fnmatch", "fractions", "functools", "glob",
    "gzip", "hashlib", "heapq", "html", "http.client", "inspect", "io", "itertools", "json",
    "logging", "math", "operator", "os", "os.path", "pathlib", "pickle", "pprint", "queue",
    "random", "re", "secrets", "shlex", "shutil", "sqlite3", "statistics", "string",
    "struct", "subprocess", "tarfile", "tempfile", "textwrap", "threading", "time",
    "traceback", "typing", "unittest", "urllib.parse", "uuid", "warnings", "weakref",
    "zipfile", "concurrent.futures", "email.message", "xml.etree.ElementTree",
)

NAMES = ("Alice", "Bob", "Carol", "David", "Eve", "Frank", "Grace", "Heidi", "Ivan", "Judy",
         "Mallory", "Niaj", "Olivia", "Peggy", "Rupert", "Sybil", "Trent", "Victor", "Walter",
         "Yasmin", "Zoe", "Liam", "Emma", "Noah", "Mia", "Lucas", "Sofia", "Hugo", "Lena", "Omar")
CITIES = ("Paris", "London", "Berlin", "Madrid", "Rome", "Tokyo", "Lisbon", "Vienna", "Oslo",
          "Dublin", "Prague", "Warsaw", "Athens", "Cairo", "Lima", "Seoul", "Toronto", "Sydney",
          "Nairobi", "Boston", "Chicago", "Denver", "Austin", "Zurich", "Helsinki")
JOBS = ("engineer", "teacher", "doctor", "artist", "chef", "pilot", "writer", "nurse",
        "farmer", "designer", "lawyer", "scientist")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "black", "white")
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Argentina": "Buenos Aires",
    "Egypt": "Cairo", "Kenya": "Nairobi", "Australia": "Canberra", "Russia": "Moscow",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw",
    "Greece": "Athens", "Austria": "Vienna", "Ireland": "Dublin", "Peru": "Lima",
    "South Korea": "Seoul", "United Kingdom": "London", "United States": "Washington, D.C.",
    "Switzerland": "Bern", "Netherlands": "Amsterdam", "Turkey": "Ankara",
}
KEYWORDS = {
    "def": "defines a function.",
    "class": "defines a class.",
    "return": "exits a function and gives a value back to the caller.",
    "if": "runs a block only when a condition is true.",
    "else": "runs a block when the preceding condition is false.",
    "elif": "checks another condition after an if.",
    "for": "loops over the items of an iterable.",
    "while": "repeats a block while a condition is true.",
    "break": "leaves the innermost loop.",
    "continue": "skips to the next iteration of a loop.",
    "import": "loads a module.",
    "from": "imports specific names from a module.",
    "try": "starts a block whose exceptions can be handled.",
    "except": "handles an exception raised in a try block.",
    "finally": "runs cleanup code whether or not an exception occurred.",
    "raise": "raises an exception.",
    "with": "uses a context manager around a block.",
    "lambda": "creates a small anonymous function.",
    "yield": "produces a value from a generator.",
    "pass": "does nothing; it is a placeholder.",
    "global": "declares that a name refers to a module-level variable.",
    "async": "defines a coroutine function.",
    "await": "waits for the result of an awaitable.",
    "assert": "checks that a condition is true, raising AssertionError otherwise.",
    "del": "deletes a name or an item.",
    "None": "is the value that means no value.",
}
GREETINGS = (
    ("Hello!", "Hello! How can I help you today?"),
    ("Hi", "Hi! What can I do for you?"),
    ("Good morning.", "Good morning! How can I help?"),
    ("How are you?", "I am fine, thank you. How can I help you?"),
    ("Thank you!", "You are welcome."),
    ("Thanks for the help.", "You are welcome. Happy to help."),
    ("Who are you?", "I am sglite-tiny, a small language model."),
    ("What is your name?", "My name is sglite-tiny."),
    ("Goodbye.", "Goodbye! Have a nice day."),
)
SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a helpful assistant. Answer briefly.",
    "You are sglite-tiny, a small and friendly assistant.",
    "You answer with JSON only.",
)


def render_chat(messages: list[dict[str, str]]) -> str:
    """Render messages exactly like CHAT_TEMPLATE does (without generation prompt)."""
    return "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)


def person(rng: random.Random) -> dict[str, object]:
    """A random person record; key order is fixed so the model learns one shape."""
    return {"name": rng.choice(NAMES), "age": rng.randint(18, 80), "city": rng.choice(CITIES)}


def json_record(rng: random.Random) -> dict[str, object]:
    """A random record of one of a few shapes."""
    kind = rng.randrange(4)
    if kind == 0:
        return person(rng)
    if kind == 1:
        p = person(rng)
        p["job"] = rng.choice(JOBS)
        return p
    if kind == 2:
        return {"id": rng.randint(1, 999), "name": rng.choice(NAMES),
                "active": rng.random() < 0.5, "tags": rng.sample(COLORS, rng.randint(0, 3))}
    country = rng.choice(sorted(CAPITALS))
    return {"country": country, "capital": CAPITALS[country]}


def chat_turn(rng: random.Random) -> tuple[str, str]:
    """One generated (user, assistant) exchange."""
    kind = rng.randrange(7)
    if kind == 0:
        return rng.choice(GREETINGS)
    if kind == 1:
        a, b = rng.randint(0, 20), rng.randint(0, 20)
        op = rng.choice("+-*")
        val = a + b if op == "+" else a - b if op == "-" else a * b
        q = rng.choice((f"What is {a} {op} {b}?", f"Compute {a} {op} {b}.", f"{a} {op} {b} = ?"))
        return q, f"{a} {op} {b} = {val}."
    if kind == 2:
        country = rng.choice(sorted(CAPITALS))
        q = rng.choice((f"What is the capital of {country}?", f"Which city is the capital of {country}?"))
        return q, f"The capital of {country} is {CAPITALS[country]}."
    if kind == 3:
        kw = rng.choice(sorted(KEYWORDS))
        q = rng.choice((f"What does the `{kw}` keyword do in Python?", f"Explain `{kw}` in Python."))
        return q, f"In Python, `{kw}` {KEYWORDS[kw]}"
    if kind == 4:
        p = person(rng)
        q = rng.choice((
            f"Give me a JSON record for a person named {p['name']}.",
            f"Create a JSON object for {p['name']}, age {p['age']}, who lives in {p['city']}.",
            "Return a JSON object with name, age and city.",
            "Generate a JSON record of a person.",
        ))
        # Questions naming a person get that person's record; generic ones a fresh one.
        return q, json.dumps(p if q.startswith(("Create", "Give")) else person(rng))
    if kind == 5:
        recs = [person(rng) for _ in range(rng.randint(2, 3))]
        return f"Give me a JSON list of {len(recs)} people.", json.dumps(recs)
    country = rng.choice(sorted(CAPITALS))
    return (f"Answer in JSON: what is the capital of {country}?",
            json.dumps({"country": country, "capital": CAPITALS[country]}))


def chat_docs(rng: random.Random, n: int) -> list[str]:
    """Generated conversations: optional system prompt, 1-3 exchanges each."""
    docs = []
    for _ in range(n):
        msgs: list[dict[str, str]] = []
        if rng.random() < 0.5:
            msgs.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            user, assistant = chat_turn(rng)
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        docs.append(render_chat(msgs))
    return docs


def json_docs(rng: random.Random, n: int) -> list[str]:
    """Generated JSON documents: one record, JSON lines, or an indented array."""
    docs = []
    for _ in range(n):
        kind = rng.randrange(3)
        if kind == 0:
            docs.append(json.dumps(json_record(rng)))
        elif kind == 1:
            docs.append("\n".join(json.dumps(json_record(rng)) for _ in range(rng.randint(2, 5))))
        else:
            docs.append(json.dumps([json_record(rng) for _ in range(rng.randint(1, 3))], indent=2))
    return docs


def pydoc_docs() -> list[str]:
    """Topic texts of the interactive help system, in sorted key order."""
    from pydoc_data.topics import topics

    return [topics[k].strip() for k in sorted(topics) if topics[k].strip()]


def docstring_docs() -> list[str]:
    """Docstrings of STDLIB_MODULES and their public classes, functions and methods."""
    docs: list[str] = []
    seen: set[str] = set()

    def add(header: str, obj: object) -> None:
        doc = inspect.getdoc(obj)
        if not doc or len(doc) < 40 or doc in seen:
            return
        seen.add(doc)
        docs.append(f"{header}\n\n{doc}")

    def sig(name: str, obj: object) -> str:
        try:
            text = f"{name}{inspect.signature(obj)}"
        except (TypeError, ValueError):
            return name
        # Default reprs like <object object at 0x7f...> differ per process: drop the address.
        return re.sub(r" at 0x[0-9a-fA-F]+", "", text)

    for mod_name in STDLIB_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except Exception:  # a stdlib module missing from this build: skip, stay deterministic
            continue
        add(f"Module {mod_name}", mod)
        for name in sorted(vars(mod)):
            obj = vars(mod)[name]
            if name.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
                continue
            if inspect.isclass(obj):
                add(f"class {mod_name}.{name}", obj)
                for attr in sorted(vars(obj)):
                    member = vars(obj)[attr]
                    if attr.startswith("_") or not callable(member):
                        continue
                    add(sig(f"{mod_name}.{name}.{attr}", member), member)
            elif callable(obj):
                add(sig(f"{mod_name}.{name}", obj), obj)
    return docs


def build_documents(seed: int, n_chat: int = 6000, n_json: int = 2000,
                    heldout_frac: float = 0.05) -> tuple[list[str], list[str], dict[str, int]]:
    """Return (train_docs, heldout_docs, sizes); ~5% of each source's documents held out."""
    rng = random.Random(seed)
    sources = {
        "pydoc": pydoc_docs(),
        "docstrings": docstring_docs(),
        "chat": chat_docs(rng, n_chat),
        "json": json_docs(rng, n_json),
    }
    train, heldout = [], []
    sizes: dict[str, int] = {}
    for name, docs in sources.items():
        docs = list(docs)
        rng.shuffle(docs)
        k = max(1, int(len(docs) * heldout_frac))
        heldout += docs[:k]
        train += docs[k:]
        sizes[f"{name}_docs"] = len(docs)
        sizes[f"{name}_chars"] = sum(len(d) for d in docs)
    # Interleave held-out sources so a short prefix of it covers every kind of text.
    rng.shuffle(heldout)
    rng.shuffle(train)
    return train, heldout, sizes
