"""Process-wide settings of the sglite frontend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class GlobalConfig:
    """Mutable, process-wide frontend settings (``sglite.global_config``).

    ``verbosity`` 2 logs each finished program's text; ``default_backend`` is
    what ``set_default_backend`` sets. The remaining flags mirror SGLang's and
    are passed to the runtime in ``sampling_params``.
    """

    verbosity: int = 0
    default_backend: Optional[Any] = None
    skip_special_tokens_in_output: bool = True
    spaces_between_special_tokens_in_out: bool = True
    enable_precache_with_tracing: bool = True
    enable_parallel_encoding: bool = True


global_config = GlobalConfig()
