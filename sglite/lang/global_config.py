"""SGLang's import path for the process-wide settings (``sglang.lang.global_config``)."""
from __future__ import annotations

from sglite.global_config import GlobalConfig, global_config

__all__ = ["GlobalConfig", "global_config"]
