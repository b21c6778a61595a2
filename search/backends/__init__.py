"""Where trials run: the :class:`Backend` contract, its events, and the backends.

- :class:`Backend` (``_base``), the jobs and events it handles (``_events``), the worker side of a
  job (``_worker``: :func:`train_job`, :func:`execute`);
- :class:`LocalBackend` (``_local``): threads in this process;
- :class:`RayBackend` (``_ray``; its control actor in ``_ray_control``, parallel-fold merging in
  ``_ray_folds``): Ray tasks on a local or remote cluster;
- :class:`SimulatedBackend` (``_simulated``): the real worker functions on a virtual
  clock in the calling thread, for deterministic tests.

Names are imported on first use, so that importing one backend (the Ray control actor's process
imports only ``_ray_control``) does not import the others.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "._base": ("Backend",),
    "._events": ("FAILURE_KINDS", "Event", "Failed", "Finished", "Report", "TrialJob"),
    "._local": ("LocalBackend",),
    "._ray": ("RayBackend", "ResourceError"),
    "._simulated": ("SimulatedBackend",),
    "._worker": ("Outcome", "StackFn", "WorkerFn", "execute", "stack_fn_for", "train_job", "train_stack"),
})

__all__ = [
    "FAILURE_KINDS",
    "Backend",
    "Event",
    "Failed",
    "Finished",
    "LocalBackend",
    "Outcome",
    "RayBackend",
    "Report",
    "ResourceError",
    "SimulatedBackend",
    "StackFn",
    "TrialJob",
    "WorkerFn",
    "execute",
    "stack_fn_for",
    "train_job",
    "train_stack",
]

if TYPE_CHECKING:
    from ._base import Backend
    from ._events import FAILURE_KINDS, Event, Failed, Finished, Report, TrialJob
    from ._local import LocalBackend
    from ._ray import RayBackend, ResourceError
    from ._simulated import SimulatedBackend
    from ._worker import Outcome, StackFn, WorkerFn, execute, stack_fn_for, train_job, train_stack
