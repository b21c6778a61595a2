"""hpsearch's search side: study spec, strategies, the ask/tell orchestrator, backends, API and CLI.

Public names are re-exported from small private modules::

    from search import load_spec, run_study, resume_study, LocalBackend, RayBackend

They are imported on first use (PEP 562), so the read-only CLI commands (``ls``, ``show``, ``best``)
start without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "._api": ("StudyResult", "make_backend", "resume_study", "run_study", "spec_diff", "stored_spec"),
    "._backend": ("Backend", "Failed", "Finished", "Report", "TrialJob", "train_job", "train_stack"),
    "._errors": ("UsageError",),
    "._local": ("LocalBackend",),
    "._orchestrator": ("Callbacks", "Interrupted", "Orchestrator", "count_done"),
    "._ray": ("RayBackend", "ResourceError"),
    "._spec": ("SpecError", "StudySpec", "load_spec", "parse_spec"),
    "._strategies": ("distributions", "make_pruner", "make_sampler", "sampler_seed"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "Backend",
    "Callbacks",
    "Failed",
    "Finished",
    "Interrupted",
    "LocalBackend",
    "Orchestrator",
    "RayBackend",
    "Report",
    "ResourceError",
    "SpecError",
    "StudyResult",
    "StudySpec",
    "TrialJob",
    "UsageError",
    "__version__",
    "count_done",
    "distributions",
    "load_spec",
    "make_backend",
    "make_pruner",
    "make_sampler",
    "parse_spec",
    "resume_study",
    "run_study",
    "sampler_seed",
    "spec_diff",
    "stored_spec",
    "train_job",
    "train_stack",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from ._api import StudyResult, make_backend, resume_study, run_study, spec_diff, stored_spec
    from ._backend import Backend, Failed, Finished, Report, TrialJob, train_job, train_stack
    from ._errors import UsageError
    from ._local import LocalBackend
    from ._orchestrator import Callbacks, Interrupted, Orchestrator, count_done
    from ._ray import RayBackend, ResourceError
    from ._spec import SpecError, StudySpec, load_spec, parse_spec
    from ._strategies import distributions, make_pruner, make_sampler, sampler_seed
