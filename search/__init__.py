"""hpsearch's search side: study spec, strategies, the ask/tell orchestrator, backends, API and CLI.

Public names are re-exported from small private modules and sub-packages::

    from search import load_spec, run_study, resume_study, LocalBackend, RayBackend, SimulatedBackend

Where things are: the study file (``_spec``), strategies (``_strategies``), the ask/tell loop
(``_orchestrator``), a run (``_api``; its study, lease and settings in ``_open``, ``_session``,
``_settings``), the final refit's epochs (``_refit``), the saved model (``_artifacts``: where and in
what format; ``_model``: load, export, predict), where trials run (``backends/``), looking at studies
(``inspect/``) and the command line (``cli/``).

They are imported on first use (PEP 562), so the read-only CLI commands (``ls``, ``show``, ``best``)
start without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "._api": ("StudyResult", "make_backend", "resume_study", "run_study", "spec_diff", "stored_spec"),
    "._errors": ("NoTrialCompleted", "UsageError"),
    "._model": ("Predictions", "export_model", "load_fold_models", "load_model", "load_model_file", "predict"),
    "._orchestrator": ("Callbacks", "Interrupted", "Orchestrator", "count_done"),
    "._spec": ("SpecError", "StudySpec", "load_spec", "parse_spec"),
    "._stop": ("StopRequested", "StopToken"),
    "._strategies": ("distributions", "make_pruner", "make_sampler", "sampler_seed"),
    ".backends": ("Backend", "Failed", "Finished", "LocalBackend", "RayBackend", "Report", "ResourceError",
                  "SimulatedBackend", "TrialJob", "train_job", "train_stack"),
})

__all__ = [
    "Backend",
    "Callbacks",
    "Failed",
    "Finished",
    "Interrupted",
    "LocalBackend",
    "NoTrialCompleted",
    "Orchestrator",
    "Predictions",
    "RayBackend",
    "Report",
    "ResourceError",
    "SimulatedBackend",
    "SpecError",
    "StopRequested",
    "StopToken",
    "StudyResult",
    "StudySpec",
    "TrialJob",
    "UsageError",
    "__version__",
    "count_done",
    "distributions",
    "export_model",
    "load_fold_models",
    "load_model",
    "load_model_file",
    "load_spec",
    "make_backend",
    "make_pruner",
    "make_sampler",
    "parse_spec",
    "predict",
    "resume_study",
    "run_study",
    "sampler_seed",
    "spec_diff",
    "stored_spec",
    "train_job",
    "train_stack",
]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from ._api import StudyResult, make_backend, resume_study, run_study, spec_diff, stored_spec
    from ._errors import NoTrialCompleted, UsageError
    from ._model import Predictions, export_model, load_fold_models, load_model, load_model_file, predict
    from ._orchestrator import Callbacks, Interrupted, Orchestrator, count_done
    from ._spec import SpecError, StudySpec, load_spec, parse_spec
    from ._stop import StopRequested, StopToken
    from ._strategies import distributions, make_pruner, make_sampler, sampler_seed
    from .backends import (
        Backend,
        Failed,
        Finished,
        LocalBackend,
        RayBackend,
        Report,
        ResourceError,
        SimulatedBackend,
        TrialJob,
        train_job,
        train_stack,
    )
