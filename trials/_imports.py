"""Importing the user's code named by an import path ``package.module:function``.

One resolver for every key that names user code (``model.factory``, ``trainable``,
``data.factory``): each caller turns :class:`ImportPathError` into its own error type.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["ImportPathError", "import_callable"]

_FORM = "expected an import path of the form 'package.module:function'"
_WHERE = ("importable where hpsearch runs and on every worker: an installed package, PYTHONPATH, or the "
          "current directory (importable, as with `python -m`)")


class ImportPathError(ValueError):
    """An import path that does not name a callable; ``str(err)`` names the key, the path and the fix."""


def import_callable(path: str | Callable[..., Any], key: str) -> Callable[..., Any]:
    """The callable ``path`` names (a callable is returned as is).

    The current directory is importable, as with ``python -m`` (Ray's local workers start there
    too), so ``hpsearch run`` beside ``mymodel.py`` finds ``mymodel:build``.

    Parameters
    ----------
    path
        ``package.module:function`` (``function`` may be dotted: ``module:Class.method``).
    key
        The study-file key that holds it, for the message (``model.factory``, ``trainable``, ...).

    Raises
    ------
    ImportPathError
        The path is malformed, its module does not import (or raises while importing), it has no
        such attribute, or the attribute is not callable.
    """
    if callable(path):
        return path
    if not isinstance(path, str) or path.count(":") != 1 or "" in path.split(":"):
        raise ImportPathError(f"{key} {path!r}: {_FORM}")
    module_name, attr = path.split(":")
    here = os.getcwd()
    if here not in sys.path:
        sys.path.insert(0, here)
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # an ImportError, or whatever the module's own code raises on import
        raise ImportPathError(f"{key} {path!r}: cannot import module {module_name!r} ({type(exc).__name__}: "
                              f"{exc}); make it {_WHERE}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ImportPathError(f"{key} {path!r}: module {module_name!r} has no attribute {attr!r}; {_FORM}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ImportPathError(f"{key} {path!r} is a {type(obj).__name__}, not a function; {_FORM}")
    return obj  # type: ignore[no-any-return]
