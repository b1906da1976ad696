"""Lazy package exports (PEP 562): a package names its public objects without importing the
submodules that define them until first use, so that importing it loads no JAX.

    _LAZY = {"forward": "forward", "init_params": "params"}  # name -> submodule
    __getattr__, __dir__ = lazy_exports(__name__, _LAZY)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_exports"]


def lazy_exports(package: str, table: Mapping[str, str], *, base: str | None = None
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A package's module-level ``__getattr__`` and ``__dir__`` for the names of ``table``.

    Args:
      package: the package's (or module's) ``__name__``.
      table: public name -> the submodule (relative to ``base``) that defines it.
      base: the package of those submodules (default ``package``; a module re-exporting names of a
        sibling passes its package).

    Returns:
      ``(__getattr__, __dir__)``: the first access to a name imports its submodule and caches the
      value in the package's namespace; an unknown name raises ``AttributeError``.
    """

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{base or package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(table))

    return __getattr__, __dir__
