"""One registry mechanism for everything chosen by name in a config: datasets, backbones, methods.

    BACKBONES = Registry("backbone", "model.backbone")

    @BACKBONES.register("mlp")
    class MLP(nn.Module): ...

    BACKBONES.get("mlp")        # the registered object; an unknown name is a ValueError naming the choices
"""

from __future__ import annotations

from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")
_MISSING = object()


class Registry(Generic[T]):
    """Named objects of one kind. ``kind`` and ``key`` (the config key that names one) go into errors."""

    def __init__(self, kind: str, key: str) -> None:
        self.kind, self.key = kind, key
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """``@registry.register("name")`` on a class or function, or ``registry.register("name", obj)``."""

        def add(o: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = o
            return o

        return add if obj is None else add(obj)

    def get(self, name: str, default: Any = _MISSING) -> T:
        """The object registered as ``name``; ``default`` if given and nothing is, else a ValueError."""
        try:
            return self._items[name]
        except KeyError:
            if default is not _MISSING:
                return default
            raise ValueError(
                f"unknown {self.kind} {name!r}; choose one of {', '.join(sorted(self._items))} ({self.key})"
            ) from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, obj: T) -> None:
        """Register or replace ``name`` (tests and plugins that swap an entry)."""
        self._items[name] = obj

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def keys(self):
        return self._items.keys()

    def items(self):
        return self._items.items()

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self._items)})"
