"""Process-wide settings of the sglite frontend."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional


@dataclass(slots=True)
class GlobalConfig:
    """Mutable, process-wide frontend settings (``sglite.global_config``).

    ``verbosity`` 2 logs each finished program's text; ``default_backend`` is
    what ``set_default_backend`` sets. The remaining flags mirror SGLang's and
    are passed to the runtime in ``sampling_params``. Slots: setting one of SGLang's
    other knobs (``enable_parallel_encoding``...) is an AttributeError naming it, not a no-op.
    """

    verbosity: int = 0
    default_backend: Optional[Any] = None
    skip_special_tokens_in_output: bool = True
    spaces_between_special_tokens_in_out: bool = True


global_config = GlobalConfig()
