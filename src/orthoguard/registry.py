"""One registry shape for every pluggable concept (judges, prompt sets, benign tasks): a name -> entry dict whose
``register(name)`` decorator refuses a second, different entry under a taken name and whose ``lookup`` names the
known entries when a name is unknown."""

from __future__ import annotations

from typing import Callable, Generic, TypeVar

from orthoguard.errors import ConfigError

T = TypeVar("T")


class Registry(dict, Generic[T]):
    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind  # in error messages: "unknown <kind> 'x' (known: ...)"

    def register(self, name: str, on_register: Callable[[T], None] | None = None) -> Callable[[T], T]:
        """Decorator: enter the decorated object under ``name`` (``on_register`` may stamp it first)."""

        def register(entry: T) -> T:
            taken = self.get(name, entry)
            if taken is not entry:
                raise ValueError(f"{self.kind} {name!r} is already registered by {getattr(taken, '__name__', taken)}")
            if on_register is not None:
                on_register(entry)
            self[name] = entry
            return entry

        return register

    def names(self) -> list[str]:
        return sorted(self)

    def lookup(self, name: str, error: type[Exception] = ConfigError) -> T:
        if name not in self:
            raise error(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})")
        return self[name]
