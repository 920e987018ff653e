"""Name → function tables, so configs pick a piece by a string (`loss_agg.name: token_mean`).

Same idea as verl's `register_adv_est`, kept to one small class: a typo in a config must fail at
startup with the config key and the list of valid names, not deep inside the first training step.
Every kind picked by name uses one (docs/CONTRACTS.md, "Construction"): the GRPO math here,
optimizers and schedules (secreason.optim), HarmBench judges and guards (secreason.eval.harmbench).
"""
from __future__ import annotations

from typing import Callable, Generic, TypeVar

from secreason.errors import ConfigError

F = TypeVar("F", bound=Callable)


class UnknownNameError(ConfigError, KeyError):
    """A registry lookup with a name that is not registered: a bad config value naming its key.

    Also a KeyError (it is a failed lookup) and, through ConfigError, a ValueError, so any of
    those `except`s catches it.
    """

    def __str__(self) -> str:
        # KeyError.__str__ would repr() the message and wrap it in quotes.
        return str(self.args[0]) if self.args else ""


class Registry(Generic[F]):
    """A named table of functions of one kind.

    `kind` says what they are, `key` is the config key whose value picks one
    (`algorithm.kl.estimator`); both only appear in error messages.
    """

    def __init__(self, kind: str, key: str) -> None:
        self.kind, self.key = kind, key
        self._table: dict[str, F] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator: `@REG.register("x")` adds the function under `name` and returns it unchanged."""

        def deco(fn: F) -> F:
            if name in self._table:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._table[name] = fn
            return fn

        return deco

    def get(self, name: str) -> F:
        """The function registered as `name`; otherwise UnknownNameError, one line naming the key and
        listing the valid names (the wording of an unknown config-group option, secreason.cli)."""
        try:
            return self._table[name]
        except (KeyError, TypeError):
            raise UnknownNameError(
                f"{self.key}={name!r} unknown; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, key={self.key!r}, names={self.names()})"
