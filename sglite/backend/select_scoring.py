"""Score ``select`` choices through a synchronous backend (the interpreter's side).

The requests and the decision are ``sglite.protocol.select``'s (shared with the server's program
executor, which sends the same payloads through its TokenizerManager); this module only sends
them over ``backend._generate_raw``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from sglite.protocol.choices import ChoicesDecision, ChoicesSamplingMethod
from sglite.protocol.select import align_scores, scoring_request, select_decision, unconditional_request

if TYPE_CHECKING:
    from sglite.backend.base import BaseBackend


def score_choices(
    backend: "BaseBackend",
    text: str,
    choices: list[str],
    temperature: float,
    method: ChoicesSamplingMethod,
    image_data: Optional[list[str]] = None,
) -> ChoicesDecision:
    """Return the decision of ``method`` plus aligned per-choice logprobs in meta_info."""
    resp = backend._generate_raw(scoring_request(text, choices, temperature, image_data))
    scores = align_scores(text, choices, resp, backend.get_model_info().get("bos_token"))
    unconditional = None
    if method.requires_unconditional_logprobs:
        unconditional = backend._generate_raw(unconditional_request(scores))
    return select_decision(choices, method, scores, unconditional)
