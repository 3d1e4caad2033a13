"""Registries: the one mechanism behind every extension point (methods, autoencoder families, perturbations,
studies).

An entry registers itself where it is defined, with the registry's decorator::

    from latenttracer.methods.base import METHODS

    @METHODS.register
    class MyMethod(Method):
        name = "mine"
        ...

A registry knows the package its built-in entries live in and imports every module of it the first time it is
asked for a name (so adding ``latenttracer/methods/mine.py`` is enough: no list elsewhere names it). Entries
outside the project come from plugin modules: ``LATENTTRACER_PLUGINS`` (paths to ``.py`` files or dotted module
names, separated by ``os.pathsep``), ``latenttracer --plugin FILE`` or the Hydra key ``plugins``, all through
:func:`load_plugins`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

__all__ = ["PLUGINS_ENV", "Registry", "RegistryError", "load_plugins"]

T = TypeVar("T")
PLUGINS_ENV = "LATENTTRACER_PLUGINS"
_loaded_plugins: dict[str, object] = {}


class RegistryError(ValueError):
    """An unknown name, a name registered twice, or a plugin that cannot be imported."""


class Registry(Generic[T]):
    """Name -> entry (a class or a function) for one extension point.

    ``what`` names the extension point in messages (e.g. ``"method"``); ``package`` is the dotted package whose
    modules hold the built-in entries; ``key`` reads an entry's name when :meth:`register` is used bare (default:
    its ``name`` attribute).
    """

    def __init__(self, what: str, package: str, key: Callable[[T], str] | None = None) -> None:
        self.what = what
        self.package = package
        self._key = key or (lambda entry: entry.name)  # type: ignore[attr-defined]
        self._entries: dict[str, T] = {}
        self._discovered = False

    # -- registering -----------------------------------------------------------------------------------------
    def register(self, entry: T | None = None, *, name: str | None = None):
        """Decorator: ``@REG.register`` (name from the entry) or ``@REG.register(name="x")``."""

        def add(obj: T) -> T:
            key = name if name is not None else self._key(obj)
            if not isinstance(key, str) or not key:
                raise RegistryError(f"{self.what}: {obj!r} has no name to register under")
            old = self._entries.get(key)
            if old is not None and old is not obj and _qualname(old) != _qualname(obj):
                raise RegistryError(f"{self.what} {key!r}: registered twice ({_qualname(old)} and {_qualname(obj)})")
            self._entries[key] = obj
            return obj

        return add(entry) if entry is not None else add

    # -- looking up ------------------------------------------------------------------------------------------
    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{self.package}.{info.name}")
        load_plugins()

    def get(self, name: str) -> T:
        """The entry ``name``; an unknown name is an error listing the known ones."""
        self._discover()
        if name not in self._entries:
            raise RegistryError(f"{self.what} {name!r} is not one of {self.names()}")
        return self._entries[name]

    def names(self) -> list[str]:
        self._discover()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self._discover()
        return sorted(self._entries.items())

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._discover()
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {sorted(self._entries)})"


def _qualname(obj: object) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def load_plugins(specs: Iterable[str | os.PathLike] | None = None) -> list[object]:
    """Import plugin modules (their ``register`` calls add entries); ``None``: those named by
    ``LATENTTRACER_PLUGINS``. A spec is a path to a ``.py`` file or a dotted module name; each loads once."""
    if specs is None:
        raw = os.environ.get(PLUGINS_ENV, "")
        specs = [s for s in raw.split(os.pathsep) if s.strip()]
    modules = []
    for spec in specs:
        spec = str(spec).strip()
        path = Path(spec).expanduser()
        key = str(path.resolve()) if spec.endswith(".py") else spec
        if key in _loaded_plugins:
            modules.append(_loaded_plugins[key])
            continue
        try:
            if spec.endswith(".py"):
                if not path.is_file():
                    raise FileNotFoundError(f"no such file: {path}")
                mod_name = f"latenttracer_plugin_{abs(hash(key)):x}_{path.stem}"
                module_spec = importlib.util.spec_from_file_location(mod_name, path)
                module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
                sys.modules[mod_name] = module
                module_spec.loader.exec_module(module)  # type: ignore[union-attr]
            else:
                module = importlib.import_module(spec)
        except RegistryError:
            raise
        except Exception as err:
            raise RegistryError(f"plugin {spec!r}: cannot import it ({type(err).__name__}: {err})") from err
        _loaded_plugins[key] = module
        modules.append(module)
    return modules
