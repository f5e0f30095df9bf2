"""Registries in which a name is written once: it is the file name of the module that defines it.

``pipeline/teachers/panns.py`` defines the teacher ``panns``, ``pipeline/students/cp_resnet.py``
the student ``cp_resnet``, ``pipeline/data/datasets/openmic.py`` the dataset ``openmic``. The
names are read from the package's folder, so listing them imports nothing; a module is imported
only when its entry is asked for (some teacher packages read files or start runtimes on import).
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Collection
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → entry (a class or a builder) for one kind of component.

    Parameters
    ----------
    kind : what the entries are, for messages (``"teacher"``, ``"student"``, …)
    package : the dotted name of the package whose modules define the entries
    not_entries : modules of the package that are helpers, not entries
    """

    def __init__(self, kind: str, package: str, *, not_entries: Collection[str] = ()):
        self.kind = kind
        self.package = package
        self.not_entries = frozenset(not_entries)
        self._entries: dict[str, T] = {}

    def names(self) -> list[str]:
        """The entries' names, sorted, without importing their modules."""
        path = sys.modules[self.package].__path__
        return sorted(
            m.name
            for m in pkgutil.iter_modules(path)
            if not m.name.startswith("_") and m.name not in self.not_entries
        )

    def register(self, entry: T) -> T:
        """Decorator: file ``entry`` under the name of the module (or package) defining it."""
        module = entry.__module__
        if module.rpartition(".")[0] != self.package:
            raise ValueError(
                f"{module}: a {self.kind} must be defined in a module of {self.package}"
            )
        self._entries[module.rpartition(".")[2]] = entry
        return entry

    def check(self, name: str) -> str:
        """``name`` if it is registered, else ValueError naming the choices."""
        if name not in self.names():
            raise ValueError(
                f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}"
            )
        return name

    def get(self, name: str) -> T:
        """The entry called ``name``, importing its module on first use."""
        importlib.import_module(f"{self.package}.{self.check(name)}")
        return self._entries[name]
