"""hpsearch's search side: study spec, strategies, the ask/tell orchestrator, backends, API and CLI.

Public names are re-exported from small private modules::

    from search import load_spec, run_study, resume_study, LocalBackend, RayBackend
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._api import StudyResult, UsageError, make_backend, resume_study, run_study, spec_diff, stored_spec
from ._backend import Backend, Failed, Finished, Report, TrialJob, train_job
from ._local import LocalBackend
from ._orchestrator import Callbacks, Interrupted, Orchestrator, count_done
from ._ray import RayBackend, ResourceError
from ._spec import SpecError, StudySpec, load_spec, parse_spec
from ._strategies import distributions, make_pruner, make_sampler, sampler_seed

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
]
