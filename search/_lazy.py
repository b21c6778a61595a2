"""PEP 562 lazy re-exports: a package names its public objects and the private modules they live
in; each module is imported when one of its names is first used. This keeps ``import search`` (and
the read-only CLI commands) from importing torch, and the Ray control actor's process from
importing anything but its own module."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, namespace: dict[str, Any], exports: dict[str, tuple[str, ...]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package`` (which lists the same names in a literal
    ``__all__``, for readers and linters; a test checks that the two agree).

    Parameters
    ----------
    package:
        The package's ``__name__``.
    namespace:
        The package's ``globals()``: a name, once imported, is stored there.
    exports:
        Relative module name (``"._local"``) -> the names it provides.
    """
    where = {name: module for module, names in exports.items() for name in names}
    names = sorted(where)

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return names

    return __getattr__, __dir__
