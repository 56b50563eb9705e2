"""What the branches of a fork share, interpreted or traced: indexing and ``group += ...``."""

from __future__ import annotations

from typing import Any, Iterator

from sglite.lang.ir import SglExpr


class StateGroupBase:
    """``group[i]``, ``len(group)``, iteration, and ``+=`` of a function of the branch index,
    a list (one element per branch), or one expression for every branch."""

    states: list[Any]

    def __getitem__(self, i: int) -> Any:
        return self.states[i]

    def __setitem__(self, i: int, value: Any) -> None:
        # ``forks[i] += x`` is ``forks[i] = forks[i].__iadd__(x)``: the same branch comes back.
        if value is not self.states[i]:
            raise TypeError("a fork branch cannot be replaced; append to it with forks[i] += ...")

    def __len__(self) -> int:
        return len(self.states)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.states)

    def __iadd__(self, other: Any) -> "StateGroupBase":
        if callable(other) and not isinstance(other, SglExpr):
            for i, s in enumerate(self.states):
                s += other(i)
        elif isinstance(other, (list, tuple)):
            if len(other) != len(self.states):
                raise ValueError(f"{len(other)} expressions for {len(self.states)} branches")
            for s, e in zip(self.states, other):
                s += e
        else:
            for s in self.states:
                s += other
        return self
