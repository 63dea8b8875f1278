"""One registry contract for what a user can bring: layers, backbones and datasets.

Each of ``nas_flex.layers``, ``nas_flex.models`` and ``nas_flex.data`` keeps a ``Registry`` of names and offers
``register(name)``, ``unregister(name)`` and ``available()`` on top of it, with the same rules everywhere:

* a taken name raises (nothing is silently replaced); registering the *same* object again under its name is a no-op,
  so a module imported twice, or the entries a search ships to its trial processes, register cleanly;
* an unknown name raises ``UnknownNameError`` with the closest valid name and every valid one;
* built-in entries cannot be unregistered.

Torch-free: the leaderboard-free parts of the package (data) and the tuner (which ships user entries to Ray workers,
``nas_flex.tune.plugins``) read it without building anything.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from nas_flex.errors import NasFlexError, unknown_name

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Names mapped to entries (classes, factories, dataset descriptions), built-in or registered by a user.

    Args:
        what: what an entry is, for messages ("layer", "backbone", "dataset").
        builtin: built-in entries given by value.
        builtin_modules: modules whose import registers built-in entries (through ``register``); imported the first
            time a name is looked up, so the registry's own import stays cheap. An entry whose ``__module__`` is one
            of them counts as built-in.
        normalize: maps a name before lookup (e.g. ``str.lower``); None keeps names as given.

    Example:
        >>> reg = Registry("widget", builtin={"a": 1})
        >>> reg.add("b", 2); reg.available()
        ['a', 'b']
        >>> reg.get("c")
        Traceback (most recent call last):
        ...
        nas_flex.errors.UnknownNameError: unknown widget 'c'; expected one of: 'a', 'b'
    """

    def __init__(self, what: str, builtin: dict[str, T] | None = None, *, builtin_modules: Iterable[str] = (),
                 normalize: Callable[[str], str] | None = None) -> None:
        self.what = what
        self._builtin: dict[str, T] = dict(builtin or {})
        self._user: dict[str, T] = {}
        self._modules = tuple(builtin_modules)
        self._loaded = not self._modules
        self._normalize = normalize

    def _key(self, name: object) -> object:
        return self._normalize(name) if self._normalize is not None and isinstance(name, str) else name

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            for module in self._modules:
                importlib.import_module(module)

    def _is_builtin_object(self, obj: object) -> bool:
        return getattr(obj, "__module__", None) in self._modules

    def add(self, name: str, obj: T) -> T:
        """Register ``obj`` under ``name`` (the decorator's work). The same object again is a no-op.

        Raises:
            NasFlexError: ``name`` is not a non-empty str, or it is taken by another entry.
        """
        if not isinstance(name, str) or not name:
            raise NasFlexError(f"a {self.what} name must be a non-empty str, but got {name!r}")
        key = self._key(name)
        if self._is_builtin_object(obj):
            taken = self._builtin.get(key)
            if taken is not None and taken is not obj:
                raise NasFlexError(f"built-in {self.what} {name!r} is defined twice")
            self._builtin[key] = obj
            return obj
        self._load_builtins()
        taken = self._builtin.get(key, self._user.get(key))
        if taken is not None and taken is not obj:
            raise NasFlexError(f"a {self.what} named {name!r} is already registered; choose another name")
        self._user[key] = obj
        return obj

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of ``add``: ``@registry.register("name")``."""
        if not isinstance(name, str) or not name:
            raise NasFlexError(f"a {self.what} name must be a non-empty str, but got {name!r}")
        return lambda obj: self.add(name, obj)

    def unregister(self, name: str) -> None:
        """Remove an entry a user registered (e.g. a test's), so the name is free again.

        Raises:
            NasFlexError: for a built-in entry. UnknownNameError: for a name nobody registered.
        """
        self._load_builtins()
        key = self._key(name)
        if key in self._builtin:
            raise NasFlexError(f"{name!r} is a built-in {self.what} and cannot be unregistered; only names given to "
                               "register()")
        if key not in self._user:
            raise unknown_name(f"registered {self.what}", name, self._user)
        del self._user[key]

    def available(self) -> list[str]:
        """Every name, built-in and registered, sorted."""
        self._load_builtins()
        return sorted({*self._builtin, *self._user})

    def __contains__(self, name: object) -> bool:
        self._load_builtins()
        key = self._key(name)
        return key in self._builtin or key in self._user

    def canonical(self, name: object) -> str:
        """The registered spelling of ``name`` (after ``normalize``); raises ``UnknownNameError`` if unknown."""
        if name not in self:
            raise unknown_name(self.what, name, self.available())
        return self._key(name)  # type: ignore[return-value]

    def get(self, name: object) -> T:
        """The entry registered under ``name``.

        Raises:
            UnknownNameError: naming the closest valid name and listing all of them.
        """
        key = self.canonical(name)
        return self._builtin[key] if key in self._builtin else self._user[key]

    def is_builtin(self, name: str) -> bool:
        """Whether ``name`` is one of the package's own entries."""
        self._load_builtins()
        return self._key(name) in self._builtin

    def install(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``, replacing a user entry of that name (not a built-in one).

        For entries shipped from another process (a search's driver to its trial workers): each trial brings its own
        unpickled copy, which must replace the one an earlier trial of the same worker left.

        Raises:
            NasFlexError: ``name`` is a built-in entry's.
        """
        key = self._key(name)
        if self.is_builtin(name):
            raise NasFlexError(f"a {self.what} named {name!r} is already registered; choose another name")
        self._user.pop(key, None)  # type: ignore[call-overload]
        self.add(name, obj)

    def user_entries(self) -> dict[str, T]:
        """The entries registered by a user (name -> entry), what a search ships to its trial processes."""
        return dict(self._user)
