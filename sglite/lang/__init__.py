"""The sglite frontend language: IR, interpreter, choices, chat templates."""
from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

_SUBMODULES = frozenset(m.name for m in pkgutil.iter_modules(__path__))


def __getattr__(name: str) -> ModuleType:
    # `sglite.lang.ir.REGEX_INT` after a bare `import sglite`, as SGLang's eager package allows.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


del annotations
