"""Looking at a study without changing it: the read-only views behind ``ls``/``show``/``best``
(``_views``, the ``--output json`` contract), optuna-dashboard (``_dashboard``), trial exports
(``_export``) and the HTML report (``_report``).

Names are imported on first use: ``hpsearch ls`` must not import pandas or matplotlib.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

__getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "._dashboard": ("LOCAL_HOSTS", "DashboardServer", "serve_dashboard", "start_dashboard"),
    "._export": ("EXPORT_FORMATS", "export_frame", "export_trials", "write_export"),
    "._report": ("write_report",),
    "._views": ("best_of", "list_studies", "show_study"),
})

__all__ = [
    "EXPORT_FORMATS",
    "LOCAL_HOSTS",
    "DashboardServer",
    "best_of",
    "export_frame",
    "export_trials",
    "list_studies",
    "serve_dashboard",
    "show_study",
    "start_dashboard",
    "write_export",
    "write_report",
]

if TYPE_CHECKING:
    from ._dashboard import LOCAL_HOSTS, DashboardServer, serve_dashboard, start_dashboard
    from ._export import EXPORT_FORMATS, export_frame, export_trials, write_export
    from ._report import write_report
    from ._views import best_of, list_studies, show_study
