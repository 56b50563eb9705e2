"""Closing distance of a JSON prefix: the budget guarantee for ``json_object`` on a CFG engine.

A context-free engine (xgrammar) does not expose its parse stack, so for the one CFG we
generate ourselves, "any JSON object" (``JSON_OBJECT_EBNF``), we track the JSON structure
alongside it with a tiny byte scanner.  ``JsonCloser.distance()`` is the length in bytes of
the shortest text that completes the prefix (e.g. ``{"a": [1, "x`` needs ``"]}``: 3), and
``canonical_byte()`` is the first byte of that text.  Every such byte is an ASCII character,
which byte-level vocabularies spell with one token, so the distance is an upper bound of the
fewest tokens to an accepting state.

One byte raises the distance by at most ``MAX_GROWTH_PER_BYTE`` (a ``,`` inside an object
opens a member: ``}`` becomes ``"":0}``), which lets the grammar bound a whole token's effect
by its length without scanning it (see xgrammar_backend.py).
"""

from __future__ import annotations

#: Any JSON object, values nested to any depth; whitespace is at most one space between
#: tokens (bounded, so a weak model cannot loop on whitespace), as ``json.dumps`` writes it.
#: Strings are right-recursive with a lookahead, as in xgrammar's built-in JSON grammar: with
#: ``char*`` instead, every token inside a string is context-dependent and a mask costs
#: milliseconds (measured 1.8 ms p50 vs 7 us on the shipped vocabulary).
JSON_OBJECT_EBNF = r"""root ::= object
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws "}" | "{" ws member (ws "," ws member)* ws "}"
member ::= string ws ":" ws value
array ::= "[" ws "]" | "[" ws value (ws "," ws value)* ws "]"
string ::= "\"" string_sub
string_sub ::= ("\"" | [^"\\\x00-\x1f] string_sub | "\\" escape string_sub) (=[ ]? [,}\]:])
escape ::= ["\\/bfnrt] | "u" [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F] [0-9a-fA-F]
number ::= "-"? ("0" | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [+-]? [0-9]+)?
ws ::= [ ]?
"""

#: Upper bound of how much one byte can raise ``distance()``.
MAX_GROWTH_PER_BYTE = 4

# Scanner modes.  "Need" is how many bytes the mode itself still needs (before closers).
_START = 0        # nothing yet: needs "{}"
_VALUE = 1        # a value must come (after ":" or "," in an array): "0"
_OBJ_OPEN = 2     # just after "{": "}" may close, or a key starts
_ARR_OPEN = 3     # just after "[": "]" may close, or a value starts
_KEY = 4          # after "," in an object: a key must come: "\"\":0"
_AFTER_KEY = 5    # key string closed: ":0"
_AFTER_VALUE = 6  # a value is complete inside a container: only closers
_STRING = 7       # inside a string (key or value); extra = pending escape bytes
_NUMBER = 8       # inside a number; extra = 1 when a digit is still required
_LITERAL = 9      # inside true/false/null; lit = the remaining letters
_DONE = 10        # the root object closed


class JsonCloser:
    """Incremental scanner of a JSON-object prefix (assumed valid: the grammar enforces it)."""

    __slots__ = ("stack", "mode", "is_key", "extra", "lit", "num", "cont")

    def __init__(self) -> None:
        self.stack = ""        # open containers, "{" / "["
        self.mode = _START
        self.is_key = False    # in _STRING: the string is an object key
        self.extra = 0         # _STRING: pending escape bytes; _NUMBER: 1 if a digit is due
        self.lit = ""          # _LITERAL: letters still to write
        self.num = ""          # _NUMBER: the part we are in: "int", "frac", "exp"
        self.cont: tuple[int, int] | tuple[()] = ()  # _STRING: (lead byte, continuation bytes due) of a UTF-8 character

    # -- snapshots (rollback / copy) ----------------------------------------------------
    def snapshot(self) -> tuple:
        return (self.stack, self.mode, self.is_key, self.extra, self.lit, self.num, self.cont)

    def restore(self, snap: tuple) -> None:
        self.stack, self.mode, self.is_key, self.extra, self.lit, self.num, self.cont = snap

    # -- distance -----------------------------------------------------------------------
    def distance(self) -> int:
        """Bytes of the shortest completion of the text scanned so far."""
        closers = len(self.stack)
        mode = self.mode
        if mode == _START:
            return 2
        if mode == _DONE:
            return 0
        if mode in (_OBJ_OPEN, _ARR_OPEN, _AFTER_VALUE):
            return closers
        if mode == _VALUE:
            return 1 + closers
        if mode == _KEY:
            return 4 + closers
        if mode == _AFTER_KEY:
            return 2 + closers
        if mode == _STRING:
            due = self.cont[1] if self.cont else 0
            return due + self.extra + 1 + (2 if self.is_key else 0) + closers
        if mode == _NUMBER:
            return self.extra + closers
        return len(self.lit) + closers  # _LITERAL

    def canonical_byte(self) -> int | None:
        """First byte of the shortest completion (None when complete)."""
        mode = self.mode
        if mode == _START:
            return ord("{")
        if mode == _DONE:
            return None
        if mode == _VALUE:
            return ord("0")
        if mode == _KEY:
            return ord('"')
        if mode == _AFTER_KEY:
            return ord(":")
        if mode == _STRING:
            if self.cont:  # finish the UTF-8 character (E0 and F0 need a higher 2nd byte)
                lead, due = self.cont
                first = due == (2 if lead < 0xF0 else 3)
                return {0xE0: 0xA0, 0xF0: 0x90}.get(lead, 0x80) if first else 0x80
            if self.extra == 0:
                return ord('"')
            return ord("n") if self.extra == 1 and not self.num else ord("0")
        if mode == _NUMBER and self.extra:
            return ord("0")
        if mode == _LITERAL:
            return ord(self.lit[0])
        return ord("}") if self.stack[-1] == "{" else ord("]")

    # -- scanning -----------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        for b in data:
            self._byte(b)

    def _value_start(self, c: str) -> None:
        if c == "{":
            self.stack += "{"
            self.mode = _OBJ_OPEN
        elif c == "[":
            self.stack += "["
            self.mode = _ARR_OPEN
        elif c == '"':
            self.mode, self.is_key, self.extra, self.num, self.cont = _STRING, False, 0, "", ()
        elif c in "-0123456789":
            self.mode, self.num = _NUMBER, "int"
            self.extra = 1 if c == "-" else 0
        elif c in "tfn":
            self.mode, self.lit = _LITERAL, {"t": "rue", "f": "alse", "n": "ull"}[c]

    def _close(self) -> None:
        self.stack = self.stack[:-1]
        self.mode = _AFTER_VALUE if self.stack else _DONE

    def _byte(self, b: int) -> None:
        c = chr(b)
        mode = self.mode
        if mode == _STRING:
            if self.cont:
                lead, due = self.cont
                self.cont = (lead, due - 1) if due > 1 else ()
                return
            if b >= 0xC0:
                self.cont = (b, 1 if b < 0xE0 else 2 if b < 0xF0 else 3)
                return
            if self.extra:
                if self.num == "u":  # \uXXXX hex digits
                    self.extra -= 1
                    if not self.extra:
                        self.num = ""
                elif c == "u":
                    self.num, self.extra = "u", 4
                else:
                    self.extra = 0
            elif c == "\\":
                self.extra, self.num = 1, ""
            elif c == '"':
                self.mode = _AFTER_KEY if self.is_key else _AFTER_VALUE
            return
        if mode == _NUMBER:
            if c.isdigit():
                self.extra = 0
                return
            if c == "." and self.num == "int":
                self.num, self.extra = "frac", 1
                return
            if c in "eE" and self.num in ("int", "frac"):
                self.num, self.extra = "exp", 1
                return
            if c in "+-" and self.num == "exp":
                return
            self.mode = _AFTER_VALUE  # the number ended; this byte is structural
            mode = _AFTER_VALUE
        if mode == _LITERAL:
            self.lit = self.lit[1:]
            if not self.lit:
                self.mode = _AFTER_VALUE
            return
        if c == " ":
            return
        if mode == _START:
            if c == "{":
                self.stack, self.mode = "{", _OBJ_OPEN
        elif mode == _VALUE:
            self._value_start(c)
        elif mode == _ARR_OPEN:
            if c == "]":
                self._close()
            else:
                self._value_start(c)
        elif mode in (_OBJ_OPEN, _KEY):
            if c == "}" and mode == _OBJ_OPEN:
                self._close()
            elif c == '"':
                self.mode, self.is_key, self.extra, self.num, self.cont = _STRING, True, 0, "", ()
        elif mode == _AFTER_KEY:
            if c == ":":
                self.mode = _VALUE
        elif mode == _AFTER_VALUE:
            if c in "}]":
                self._close()
            elif c == ",":
                self.mode = _KEY if self.stack[-1] == "{" else _VALUE
