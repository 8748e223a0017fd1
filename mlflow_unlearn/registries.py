"""One registry type for everything the engine looks up by name: methods, models, data sources, forget-spec forms.

A :class:`Registry` maps names to entries of one kind. It refuses a second entry under a taken name, names the
known entries when asked for an unknown one, and can remove an entry again (a test that registers a method of its
own removes it afterwards through :meth:`Registry.unregister`, never by reaching into a private dict). Importing
this module costs nothing: the forget grammar, which the registry plugin parses in a server's request threads,
uses it without torch.

>>> colours = Registry[int]("colour")
>>> colours.register("red", 1)
1
>>> "red" in colours, colours.names(), colours.get("red")
(True, ['red'], 1)
>>> colours.get("blue")
Traceback (most recent call last):
...
ValueError: Unknown colour 'blue'; expected one of: red
>>> colours.unregister("red"), len(colours)
(1, 0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
F = TypeVar("F")


class Registry(Generic[T]):
    """Entries of one kind by name.

    Args:
        kind: what an entry is, in words (``"unlearning method"``, ``"model"``): error messages name it.
    """

    def __init__(self, kind: str) -> None:
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"Expected argument `kind` to be a non-empty str but got {kind!r}")
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name`` and return it.

        Raises:
            ValueError: ``name`` is not a non-empty str, or an entry is already registered under it.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"Expected the name of a {self.kind} to be a non-empty str but got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind[0].upper()}{self.kind[1:]} {name!r} is already registered; unregister "
                             "it first or choose another name")
        self._entries[name] = entry
        return entry

    def decorator(self, name: str, make: Callable[[F], T] | None = None) -> Callable[[F], F]:
        """A decorator that registers what it decorates under ``name`` (or ``make(fn)``, when the entry wraps the
        function) and returns it unchanged."""

        def register(fn: F) -> F:
            self.register(name, make(fn) if make is not None else fn)  # type: ignore[arg-type]
            return fn

        return register

    def unregister(self, name: str) -> T:
        """Remove the entry ``name`` and return it.

        Raises:
            ValueError: for an unknown name; the message lists the known ones.
        """
        entry = self.get(name)
        del self._entries[name]
        return entry

    def get(self, name: str) -> T:
        """The entry ``name``.

        Raises:
            ValueError: for an unknown name; the message lists the known ones.
        """
        if name not in self._entries:
            raise ValueError(f"Unknown {self.kind} {name!r}; expected one of: {', '.join(self.names())}")
        return self._entries[name]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs, sorted by name."""
        return [(name, self._entries[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
