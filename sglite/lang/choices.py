"""SGLang's path for the select methods; the module itself is ``sglite.protocol.choices``."""
from __future__ import annotations

import sys

from sglite.protocol import choices as _choices

sys.modules[__name__] = _choices  # one module object: patches and isinstance checks see the same thing
