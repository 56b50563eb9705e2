"""Ways to pick one choice of a ``select`` from per-choice token logprobs.

Every method receives, per choice, the logprobs of exactly the choice's own
tokens (``[logprob, token_id, text]`` triples; the backend already dropped the
shared context tokens) and returns a :class:`ChoicesDecision`.

Known bias (SGLang #523/#835): averaging favours long choices whose tail tokens
are predictable; ``unconditional_likelihood_normalized`` counters that by
subtracting each token's context-free logprob.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

TokenLogprob = Sequence[Any]  # [logprob | None, token_id, text | None]


@dataclass
class ChoicesDecision:
    """The chosen string plus method-specific diagnostics for ``get_meta_info``."""

    decision: str
    meta_info: dict[str, Any] = field(default_factory=dict)


def _mean(values: Sequence[Optional[float]]) -> float:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else 0.0


def _argmax(values: Sequence[float]) -> int:
    # First maximum wins so ties are deterministic and follow choice order.
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


class ChoicesSamplingMethod:
    """Base class; subclasses implement ``__call__``."""

    name = "base"
    requires_unconditional_logprobs = False

    def __call__(
        self,
        *,
        choices: list[str],
        normalized_prompt_logprobs: list[float],
        input_token_logprobs: Sequence[Sequence[TokenLogprob]],
        output_token_logprobs: Sequence[Sequence[TokenLogprob]],
        unconditional_token_logprobs: Optional[Sequence[Sequence[TokenLogprob]]] = None,
    ) -> ChoicesDecision:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class TokenLengthNormalized(ChoicesSamplingMethod):
    """Pick the highest mean logprob over the choice's own tokens (the default)."""

    name = "token_length_normalized"

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None) -> ChoicesDecision:
        best = _argmax(normalized_prompt_logprobs)
        return ChoicesDecision(choices[best], {})


class GreedyTokenSelection(ChoicesSamplingMethod):
    """Compare choices token by token, keeping those with the best logprob at each step.

    Shorter choices are padded with their own mean logprob so that they stay
    comparable after their last token. Remaining ties go to the earliest choice.
    """

    name = "greedy_token_selection"

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None) -> ChoicesDecision:
        rows = [[t[0] if t[0] is not None else 0.0 for t in toks] for toks in input_token_logprobs]
        width = max((len(r) for r in rows), default=0)
        matrix = [r + [_mean(r)] * (width - len(r)) for r in rows]
        alive = list(range(len(choices)))
        for col in range(width):
            best = max(matrix[i][col] for i in alive)
            alive = [i for i in alive if matrix[i][col] == best]
            if len(alive) == 1:
                break
        return ChoicesDecision(choices[alive[0]], {"greedy_logprob_matrix": matrix})


class UnconditionalLikelihoodNormalized(ChoicesSamplingMethod):
    """Pick the best mean of ``logprob(token | context) - logprob(token | no context)``.

    The first unconditional token has no context at all; the runtime reports
    ``None`` there and it counts as 0.
    """

    name = "unconditional_likelihood_normalized"
    requires_unconditional_logprobs = True

    def __call__(self, *, choices, normalized_prompt_logprobs, input_token_logprobs,
                 output_token_logprobs, unconditional_token_logprobs=None) -> ChoicesDecision:
        if unconditional_token_logprobs is None:
            raise ValueError("unconditional_likelihood_normalized needs unconditional_token_logprobs")
        scores = []
        for cond, uncond in zip(input_token_logprobs, unconditional_token_logprobs):
            diffs = [
                (c[0] if c[0] is not None else 0.0) - (u[0] if u[0] is not None else 0.0)
                for c, u in zip(cond, uncond)
            ]
            scores.append(_mean(diffs))
        best = _argmax(scores)
        return ChoicesDecision(
            choices[best],
            {
                "normalized_unconditional_prompt_logprobs": scores,
                "unconditional_token_logprobs": unconditional_token_logprobs,
            },
        )


token_length_normalized = TokenLengthNormalized()
greedy_token_selection = GreedyTokenSelection()
unconditional_likelihood_normalized = UnconditionalLikelihoodNormalized()
