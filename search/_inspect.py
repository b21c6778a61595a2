"""Looking at a study: optuna-dashboard, a self-contained HTML report, and trial exports.

Everything here only reads the study (the dashboard itself is optuna-dashboard, which can edit
and delete studies: it binds ``127.0.0.1`` unless told otherwise).

>>> from search._inspect import export_trials, write_report
>>> rows = export_trials("digits-tpe", storage_url="sqlite:///hpsearch.db")  # doctest: +SKIP
>>> write_report("digits-tpe", "report/", storage_url="sqlite:///hpsearch.db")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import errno
import html
import json
import math
import socket
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import storage as st

from ._views import show_study

if TYPE_CHECKING:
    import optuna
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "EXPORT_FORMATS",
    "LOCAL_HOSTS",
    "DashboardServer",
    "export_frame",
    "export_trials",
    "serve_dashboard",
    "start_dashboard",
    "write_export",
    "write_report",
]

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
"""Hosts the dashboard binds without a warning (only this machine can reach them)."""

EXPORT_FORMATS = ("csv", "json", "parquet")
"""Formats :func:`write_export` writes."""

_TOP_CURVES = 5
_TOP_TABLE = 10


def _usage_error(message: str) -> Exception:
    from ._errors import UsageError

    return UsageError(message)


# -- dashboard ----------------------------------------------------------------------------------------


def _no_auth_warning(host: str, port: int, url: str) -> str:
    return (
        f"hpsearch: warning: the dashboard on {host}:{port} has no authentication: anyone who can "
        f"reach it can view, modify and delete the studies in {st.redact(url)}; bind 127.0.0.1 "
        "(the default) and use an SSH tunnel to reach it from elsewhere"
    )


def _server_classes(host: str) -> tuple[type, type]:
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

    class _Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class _QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    return _Server, _QuietHandler


class DashboardServer:
    """optuna-dashboard on a threaded WSGI server, bound and ready, not yet serving.

    Create it with :func:`start_dashboard` (serves in a background thread) or use it through
    :func:`serve_dashboard` (blocks). It is a context manager that stops the server on exit.

    Attributes
    ----------
    host : str
        The address it is bound to.
    port : int
        The port it is bound to (the real one when ``0`` was asked for).
    storage_url : str
        The resolved storage URL (may contain a password; print :attr:`redacted_url`).
    """

    def __init__(self, storage_url: str | None = None, *, host: str = "127.0.0.1", port: int = 8080,
                 log_requests: bool = False) -> None:
        from wsgiref.simple_server import WSGIRequestHandler

        url = st.resolve_url(storage_url)
        server_cls, quiet_handler = _server_classes(host)
        # Bind first: a port in use is reported before anything else happens.
        try:
            self._httpd = server_cls((host, port), WSGIRequestHandler if log_requests else quiet_handler)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise _usage_error(f"port {port} on {host} is in use; pick another with --port") from None
            if e.errno == errno.EACCES:
                raise _usage_error(
                    f"no permission to bind port {port} on {host}; pick a port above 1023 with --port"
                ) from None
            raise _usage_error(f"cannot listen on {host}:{port}: {e.strerror or e}; check --host") from None
        try:
            import optuna_dashboard

            self._storage = st.create_storage(url, create=False)
            self._httpd.set_app(optuna_dashboard.wsgi(self._storage))
        except BaseException:
            self._httpd.server_close()
            raise
        self.host = host
        self.port = int(self._httpd.server_address[1])
        self.storage_url = url
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def url(self) -> str:
        """Base URL of the dashboard, e.g. ``http://127.0.0.1:8080``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def redacted_url(self) -> str:
        """The storage URL with any password replaced, safe to print."""
        return st.redact(self.storage_url)

    def serve_forever(self) -> None:
        """Serve requests in this thread until :meth:`stop` is called from another thread."""
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        finally:
            self._close()

    def start(self) -> DashboardServer:
        """Serve in a daemon thread and return at once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                            name="hpsearch-dashboard", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close the socket and the storage's connections (idempotent)."""
        if self._closed:
            return
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._httpd.server_close()
        self._storage.engine.dispose()

    def __enter__(self) -> DashboardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_dashboard(storage_url: str | None = None, *, host: str = "127.0.0.1", port: int = 8080,
                    log_requests: bool = False) -> DashboardServer:
    """Start optuna-dashboard in a background thread; returns at once.

    Parameters
    ----------
    storage_url : str, optional
        Storage URL; else ``$HPSEARCH_STORAGE``; else ``sqlite:///hpsearch.db``. The storage is
        opened with :func:`storage.create_storage` (SQLite: WAL and a busy timeout, so reading a
        live study never makes its writer fail with ``database is locked``).
    host : str, default "127.0.0.1"
        Address to bind. Any host but ``127.0.0.1``/``localhost``/``::1`` prints a warning on
        stderr: the dashboard has no authentication and can modify and delete studies.
    port : int, default 8080
        Port to bind; ``0`` picks a free one (see :attr:`DashboardServer.port`).
    log_requests : bool, default False
        Log every HTTP request on stderr.

    Returns
    -------
    DashboardServer
        Serving; call :meth:`~DashboardServer.stop` (or use it as a context manager) to end it.

    Raises
    ------
    UsageError
        The port is in use (``port 8080 on 127.0.0.1 is in use; pick another with --port``) or
        cannot be bound.
    StorageError
        The storage cannot be opened or holds no studies.
    """
    server = DashboardServer(storage_url, host=host, port=port, log_requests=log_requests)
    if host not in LOCAL_HOSTS:
        print(_no_auth_warning(host, server.port, server.storage_url), file=sys.stderr, flush=True)
    return server.start()


def serve_dashboard(storage_url: str | None = None, *, host: str = "127.0.0.1", port: int = 8080,
                    log_requests: bool = False) -> None:
    """Serve optuna-dashboard on the storage until Ctrl-C (blocking).

    Parameters
    ----------
    storage_url, host, port, log_requests
        As for :func:`start_dashboard`.

    Raises
    ------
    UsageError
        The port is in use or cannot be bound.
    StorageError
        The storage cannot be opened or holds no studies.
    """
    server = DashboardServer(storage_url, host=host, port=port, log_requests=log_requests)
    if host not in LOCAL_HOSTS:
        print(_no_auth_warning(host, server.port, server.storage_url), file=sys.stderr, flush=True)
    print(f"optuna-dashboard for {server.redacted_url} at {server.url}/dashboard (Ctrl-C to stop)",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("dashboard stopped", file=sys.stderr)


# -- export -------------------------------------------------------------------------------------------


def _finite(v: Any) -> Any:
    """``v`` with non-finite floats (also nested) replaced by ``None``."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def export_trials(name: str, *, storage_url: str | None = None) -> list[dict[str, Any]]:
    """One dict per trial of study ``name``, in trial-number order.

    The rows are the ``trials`` of :func:`search._views.show_study` (what ``hpsearch show NAME -o
    json`` prints): ``number, state, value, value_std, params`` (a dict), ``fold_scores`` (a list),
    ``epochs, duration_s, fail_reason, node, retry_of``; non-finite numbers are ``None``.

    Parameters
    ----------
    name : str
        Study name.
    storage_url : str, optional
        Storage URL; else ``$HPSEARCH_STORAGE``; else ``sqlite:///hpsearch.db``.

    Returns
    -------
    list[dict]

    Raises
    ------
    StudyNotFound
        No study has that name.
    """
    return [_finite(t) for t in show_study(name, storage_url)["trials"]]


def _flat_columns(rows: Sequence[dict[str, Any]]) -> tuple[list[str], int]:
    params: list[str] = []
    n_folds = 0
    for r in rows:
        for k in r.get("params") or {}:
            if k not in params:
                params.append(k)
        n_folds = max(n_folds, len(r.get("fold_scores") or []))
    return params, n_folds


def export_frame(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Flatten :func:`export_trials` rows into a table (the csv/parquet layout).

    ``params`` become ``param_<name>`` columns and ``fold_scores`` ``fold_<i>`` columns (``i``
    from 0); a trial without a parameter or fold has an empty cell. Integer columns (``number``,
    ``epochs``, ``retry_of``) keep an integer type with missing values.

    Parameters
    ----------
    rows : sequence of dict
        What :func:`export_trials` returns.

    Returns
    -------
    pandas.DataFrame
    """
    import pandas as pd

    params, n_folds = _flat_columns(rows)
    head = ["number", "state", "value", "value_std"]
    tail = ["epochs", "duration_s", "fail_reason", "node", "retry_of"]
    extra = [k for k in (rows[0] if rows else {}) if k not in (*head, *tail, "params", "fold_scores")]
    columns = [*head, *(f"param_{p}" for p in params), *(f"fold_{i}" for i in range(n_folds)), *tail, *extra]
    cols: dict[str, list[Any]] = {c: [] for c in columns}
    for r in rows:
        for k in (*head, *tail, *extra):
            cols[k].append(r.get(k))
        for p in params:
            cols[f"param_{p}"].append((r.get("params") or {}).get(p))
        folds = r.get("fold_scores") or []
        for i in range(n_folds):
            cols[f"fold_{i}"].append(folds[i] if i < len(folds) else None)
    data: dict[str, Any] = {}
    for col, values in cols.items():
        kinds = {type(v) for v in values if v is not None}
        if col in ("value", "value_std", "duration_s") or col.startswith("fold_"):
            data[col] = pd.array([math.nan if v is None else float(v) for v in values], dtype="float64")
        elif col in ("number", "epochs", "retry_of") or (kinds and kinds <= {int}):
            data[col] = pd.array(values, dtype="Int64")
        elif kinds and kinds <= {bool}:
            data[col] = pd.array(values, dtype="boolean")
        elif kinds and kinds <= {int, float}:
            data[col] = pd.array([math.nan if v is None else float(v) for v in values], dtype="float64")
        elif len(kinds) > 1:  # mixed categorical choices: text keeps them in one typed column
            data[col] = pd.array([None if v is None else str(v) for v in values], dtype="object")
        else:
            data[col] = pd.array(values, dtype="object")
    return pd.DataFrame(data, columns=columns)


def write_export(name: str, fmt: str, out: str | Path | None = None, *, storage_url: str | None = None,
                 stream: IO[str] | None = None) -> Path | None:
    """Write the trials of study ``name`` as csv, json or parquet.

    Parameters
    ----------
    name : str
        Study name.
    fmt : {"csv", "json", "parquet"}
        ``json`` is an array of :func:`export_trials` rows (nested ``params``, list
        ``fold_scores``); ``csv``/``parquet`` is :func:`export_frame`'s flat table.
    out : str or Path, optional
        File to write. ``None`` writes csv/json to ``stream``; parquet needs a file.
    storage_url : str, optional
        Storage URL; else ``$HPSEARCH_STORAGE``; else ``sqlite:///hpsearch.db``.
    stream : text stream, optional
        Where csv/json go when ``out`` is ``None`` (default: ``sys.stdout``).

    Returns
    -------
    Path or None
        The file written, or ``None`` when written to ``stream``.

    Raises
    ------
    UsageError
        Unknown format, parquet without ``out``, or ``out``'s directory does not exist.
    StudyNotFound
        No study has that name.
    """
    if fmt not in EXPORT_FORMATS:
        raise _usage_error(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "parquet" and out is None:
        raise _usage_error("parquet is a binary format; give a file with --out FILE")
    path = Path(out) if out is not None else None
    if path is not None and not path.parent.is_dir():
        raise _usage_error(f"cannot write {path}: directory {path.parent} does not exist")
    rows = export_trials(name, storage_url=storage_url)
    if fmt == "json":
        text = json.dumps(rows, indent=2, default=str, allow_nan=False) + "\n"
    elif fmt == "csv":
        text = export_frame(rows).to_csv(index=False)
    else:
        assert path is not None
        export_frame(rows).to_parquet(path, index=False, engine="pyarrow")
        return path
    if path is None:
        (stream or sys.stdout).write(text)
        return None
    path.write_text(text, encoding="utf-8")
    return path


# -- report -------------------------------------------------------------------------------------------


@contextmanager
def _plotting() -> Iterator[Any]:
    """pyplot for optuna's matplotlib plots without leaving global state behind.

    Agg is selected only when nothing chose a backend yet (a script, the CLI); an already imported
    pyplot (a notebook) keeps its backend, since saving a figure works on any. Optuna's
    ``plt.style.use("ggplot")`` is undone by the surrounding ``rc_context``.
    """
    import os

    import matplotlib

    if "matplotlib.pyplot" not in sys.modules and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning and matplotlib layout notes
        yield plt


def _fig_of(ax: Any) -> Figure:
    import numpy as np

    first = np.ravel(ax)[0] if isinstance(ax, np.ndarray) else ax
    return first.figure


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _value_pm(v: Any, std: Any) -> str:
    return _fmt(v) + (f" ± {std:.3g}" if isinstance(std, (int, float)) else "")


class _Section:
    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[str] = []

    def image(self, path: Path, alt: str) -> None:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        self.parts.append(
            f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(path.name)}</figcaption></figure>"
        )

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{html.escape(text)}</p>')

    def raw(self, markup: str) -> None:
        self.parts.append(markup)

    def render(self) -> str:
        return f"<section><h2>{html.escape(self.title)}</h2>\n" + "\n".join(self.parts) + "</section>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c if isinstance(c, str) else _fmt(c))}</td>" for c in r) + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}
th{background:#f4f4f4}figure{display:inline-block;margin:.5em}img{max-width:100%}
.note{color:#666;font-style:italic}pre{background:#f7f7f7;padding:1em;overflow:auto}
dl{display:grid;grid-template-columns:max-content auto;gap:.2em 1em}dt{font-weight:bold}
"""


def _importance_skip_reason(complete: Sequence[optuna.trial.FrozenTrial]) -> str | None:
    if len(complete) < 2:
        return f"parameter importances need at least 2 completed trials; this study has {len(complete)}"
    common = set.intersection(*(set(t.params) for t in complete))
    varying = [p for p in common if len({json.dumps(t.params[p], default=str) for t in complete}) > 1]
    if len(varying) < 2:
        return (
            "parameter importances are undefined with fewer than 2 varying parameters "
            f"(varying: {', '.join(sorted(varying)) or 'none'})"
        )
    return None


def _learning_curves(top: Sequence[optuna.trial.FrozenTrial], metric: str | None, out_dir: Path,
                     section: _Section) -> list[Path]:
    from matplotlib.figure import Figure

    paths: list[Path] = []
    with_values = [t for t in top if t.intermediate_values]
    if with_values:
        fig = Figure(figsize=(7, 4.5))
        ax = fig.add_subplot()
        for t in with_values:
            steps = sorted(t.intermediate_values)
            ax.plot(steps, [t.intermediate_values[s] for s in steps], marker=".",
                    label=f"trial {t.number} ({_fmt(t.value)})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"{metric or 'value'} (mean over folds)")
        ax.set_title(f"Intermediate values of the top {len(top)} trials")
        ax.legend(fontsize="small")
        paths.append(_save(fig, out_dir / "intermediate_values.png"))
        section.image(paths[-1], "intermediate values of the top trials")
    else:
        section.note("the top trials have no intermediate values")
    for t in top:
        curves = t.user_attrs.get("curves")
        if not isinstance(curves, dict) or not curves:
            section.note(f"trial {t.number} has no stored per-fold curves")
            continue
        names = sorted(curves)
        fig = Figure(figsize=(4.2 * len(names), 3.6))
        for i, m in enumerate(names, start=1):
            ax = fig.add_subplot(1, len(names), i)
            for k, fold in enumerate(curves[m] or []):
                ys = [float("nan") if y is None else y for y in fold]
                ax.plot(range(1, len(ys) + 1), ys, label=f"fold {k}")
            ax.set_title(m)
            ax.set_xlabel("epoch")
            ax.legend(fontsize="x-small")
        fig.suptitle(f"trial {t.number}: per-fold curves")
        fig.tight_layout()
        paths.append(_save(fig, out_dir / f"curves_trial_{t.number}.png"))
        section.image(paths[-1], f"per-fold learning curves of trial {t.number}")
    return paths


def write_report(name: str, out_dir: str | Path, *, storage_url: str | None = None) -> Path:
    """Write a self-contained HTML report of study ``name`` and its plots as PNG files.

    ``out_dir/report.html`` embeds every image as a base64 data URI (it needs no network and no
    other file to view); the same images are written next to it as PNG files: optimization
    history, parameter importances, parallel coordinates, slice plots, the intermediate values
    and per-fold learning curves of the top 5 trials. It also holds the best 10 trials (params,
    value ± std over folds, fold scores, epochs), the best configuration's held-out test score
    (or "not refit yet"), the failure reasons of failed trials and the study spec.

    Parameters
    ----------
    name : str
        Study name.
    out_dir : str or Path
        Directory for ``report.html`` and the PNG files (created if missing; files of the same
        name are overwritten).
    storage_url : str, optional
        Storage URL; else ``$HPSEARCH_STORAGE``; else ``sqlite:///hpsearch.db``.

    Returns
    -------
    Path
        The HTML file.

    Raises
    ------
    StudyNotFound
        No study has that name.
    StorageError
        The storage cannot be opened.
    """
    import optuna
    import optuna.visualization.matplotlib as ovm
    from optuna.trial import TrialState

    url = st.resolve_url(storage_url)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    view = show_study(name, url, order="best")  # raises StudyNotFound with the known names
    rdb = st.create_storage(url, create=False)
    try:
        study = optuna.load_study(study_name=name, storage=rdb)
        trials = study.get_trials(deepcopy=False)
        attrs = dict(study.user_attrs)
    finally:
        rdb.engine.dispose()
    spec = attrs.get("hpsearch_spec") or {}
    metric = view.get("metric") or "objective"
    by_number = {t.number: t for t in trials}
    complete_rows = [r for r in view["trials"] if r["state"] == "COMPLETE" and r["value"] is not None]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    top_trials = [by_number[r["number"]] for r in complete_rows[:_TOP_CURVES] if r["number"] in by_number]

    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1

    sections: list[_Section] = []

    # best configuration + held-out test score
    best = _Section("Best configuration")
    test = attrs.get("test_result") or None
    if complete_rows:
        b = complete_rows[0]
        items = [("trial", str(b["number"])), (f"CV {metric}", _value_pm(b["value"], b["value_std"])),
                 ("fold scores", ", ".join(_fmt(s) for s in b.get("fold_scores") or []) or "-"),
                 ("epochs", _fmt(b.get("epochs")))]
        items += [(f"param {k}", _fmt(v, 6)) for k, v in b["params"].items()]
        if test and test.get("trial") == b["number"]:
            label = f"held-out test score ({test.get('metric') or metric})"
            items.append((label, _fmt(test.get("test_score"))))
            for k in ("test_accuracy", "test_loss", "epochs"):
                if k in test:
                    items.append((f"test {k.removeprefix('test_')}", _fmt(test.get(k))))
        else:
            note = "not refit yet"
            if test:
                note += f" (the last refit was of trial {test.get('trial')}, no longer the best)"
            items.append(("held-out test score", note))
        best.raw("<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
                 + "</dl>")
    else:
        best.note("no trial has completed yet; held-out test score: not refit yet")
    sections.append(best)

    pngs: list[Path] = []
    plots = _Section("Search plots")
    curves = _Section(f"Learning curves of the top {_TOP_CURVES} trials")
    if not complete:
        plots.note("no trial has completed yet: nothing to plot")
        curves.note("no trial has completed yet")
    else:
        with _plotting() as plt:

            def draw(fname: str, title: str, fn: Any, *args: Any, **kw: Any) -> None:
                try:
                    fig = _fig_of(fn(*args, **kw))
                except Exception as e:  # a plot optuna cannot draw for this study: say why, go on
                    plots.note(f"{title}: not drawn ({type(e).__name__}: {e})")
                    return
                try:
                    pngs.append(_save(fig, out / fname))
                    plots.image(pngs[-1], title)
                finally:
                    plt.close(fig)

            draw("optimization_history.png", "optimization history", ovm.plot_optimization_history, study,
                 target_name=metric)
            reason = _importance_skip_reason(complete)
            if reason is None:
                from optuna.importance import FanovaImportanceEvaluator

                draw("param_importances.png", "parameter importances", ovm.plot_param_importances, study,
                     evaluator=FanovaImportanceEvaluator(seed=0), target_name=metric)
            else:
                plots.note(reason)
            draw("parallel_coordinate.png", "parallel coordinates", ovm.plot_parallel_coordinate, study,
                 target_name=metric)
            draw("slice.png", "slice plots", ovm.plot_slice, study, target_name=metric)
        pngs += _learning_curves(top_trials, metric, out, curves)
    sections += [plots, curves]

    # best 10 trials
    top10 = _Section(f"Best {_TOP_TABLE} trials")
    if complete_rows:
        params = list(dict.fromkeys(k for r in complete_rows[:_TOP_TABLE] for k in r["params"]))
        top10.raw(_table(
            ["rank", "trial", f"{metric} ± std", *params, "fold scores", "epochs", "seconds"],
            [[str(i), str(r["number"]), _value_pm(r["value"], r["value_std"]),
              *(_fmt(r["params"].get(p), 6) for p in params),
              ", ".join(_fmt(s) for s in r.get("fold_scores") or []) or "-", r.get("epochs"),
              r.get("duration_s")]
             for i, r in enumerate(complete_rows[:_TOP_TABLE], start=1)],
        ))
    else:
        top10.note("no completed trial")
    sections.append(top10)

    failed = _Section("Failed trials")
    # out-of-memory trials are PRUNED (so that the sampler avoids them) and keep their reason
    fail_rows = sorted((r for r in view["trials"] if r["state"] == "FAIL" or (
        r["state"] == "PRUNED" and r.get("fail_reason"))), key=lambda r: r["number"])
    if fail_rows:
        failed.raw(_table(
            ["trial", "reason", "re-run", "retry of"],
            [[str(r["number"]), r.get("fail_reason") or "(no reason stored)",
              "no (recorded PRUNED)" if r["state"] == "PRUNED"
              else "yes" if by_number.get(r["number"]) and by_number[r["number"]].user_attrs.get("will_retry")
              else "no", r.get("retry_of")] for r in fail_rows],
        ))
    else:
        failed.note("no trial failed")
    sections.append(failed)

    spec_section = _Section("Study spec")
    if spec:
        spec_section.raw(f"<pre>{html.escape(json.dumps(spec, indent=2, default=str))}</pre>")
    else:
        spec_section.note("no hpsearch spec stored with this study")
    sections.append(spec_section)

    summary = [
        ("storage", st.redact(url)),
        ("direction", str(view.get("direction"))),
        ("metric", str(metric)),
        ("strategy", str(view.get("strategy") or spec.get("strategy") or "-")),
        ("trials", ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"),
        ("budget", _fmt(spec.get("n_trials"))),
        ("generated", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")),
    ]
    title = f"hpsearch report: {name}"
    doc = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n<dl>"
        + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in summary)
        + "</dl>\n" + "\n".join(s.render() for s in sections) + "\n</body></html>\n"
    )
    path = out / "report.html"
    path.write_text(doc, encoding="utf-8")
    return path
