"""SGLang's path for chat templates; the module itself is ``sglite.protocol.chat_template``."""
from __future__ import annotations

import sys

from sglite.protocol import chat_template as _chat_template

sys.modules[__name__] = _chat_template  # one module object: patches see the same thing
