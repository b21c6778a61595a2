"""``hpsearch report``: a self-contained HTML report (images embedded) and PNG plots of a study.

>>> from search.inspect import write_report
>>> write_report("digits-tpe", "report/", storage_url="sqlite:///hpsearch.db")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import storage as st
from storage import StudyAttr, TrialAttr

from ._views import show_study

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

__all__ = ["write_report"]

_TOP_CURVES = 5
_TOP_TABLE = 10


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
        curves = t.user_attrs.get(TrialAttr.CURVES)
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
    view = show_study(name, url, order="best")  # raises StudyNotFound with the known names
    out = Path(out_dir)  # created only once the study is known to exist
    out.mkdir(parents=True, exist_ok=True)
    rdb = st.create_storage(url, create=False)
    try:
        study = optuna.load_study(study_name=name, storage=rdb)
        trials = study.get_trials(deepcopy=False)
        attrs = dict(study.user_attrs)
    finally:
        rdb.engine.dispose()
    spec = attrs.get(StudyAttr.SPEC) or {}
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
    test = attrs.get(StudyAttr.TEST_RESULT) or None
    if complete_rows:
        b = complete_rows[0]
        items = [("trial", str(b["number"])), (f"CV {metric}", _value_pm(b["value"], b[TrialAttr.VALUE_STD])),
                 ("fold scores", ", ".join(_fmt(s) for s in b.get(TrialAttr.FOLD_SCORES) or []) or "-"),
                 ("epochs", _fmt(b.get(TrialAttr.EPOCHS)))]
        items += [(f"param {k}", _fmt(v, 6)) for k, v in b["params"].items()]
        if test and test.get("trial") == b["number"]:
            label = f"held-out test score ({test.get('metric') or metric})"
            items.append((label, _fmt(test.get("test_score"))))
            shown = [k for k in test if k.startswith("test_") and k not in ("test_score", "test_result")]
            for k in [*shown, "epochs"]:
                if k in test and test.get(k) is not None:
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
            [[str(i), str(r["number"]), _value_pm(r["value"], r[TrialAttr.VALUE_STD]),
              *(_fmt(r["params"].get(p), 6) for p in params),
              ", ".join(_fmt(s) for s in r.get(TrialAttr.FOLD_SCORES) or []) or "-", r.get(TrialAttr.EPOCHS),
              r.get(TrialAttr.DURATION_S)]
             for i, r in enumerate(complete_rows[:_TOP_TABLE], start=1)],
        ))
    else:
        top10.note("no completed trial")
    sections.append(top10)

    failed = _Section("Failed trials")
    # out-of-memory trials are PRUNED (so that the sampler avoids them) and keep their reason
    fail_rows = sorted((r for r in view["trials"] if r["state"] == "FAIL" or (
        r["state"] == "PRUNED" and r.get(TrialAttr.FAIL_REASON))), key=lambda r: r["number"])
    if fail_rows:
        failed.raw(_table(
            ["trial", "reason", "re-run", "retry of"],
            [[str(r["number"]), r.get(TrialAttr.FAIL_REASON) or "(no reason stored)",
              "no (recorded PRUNED)" if r["state"] == "PRUNED"
              else "yes" if by_number.get(r["number"]) and by_number[r["number"]].user_attrs.get(TrialAttr.WILL_RETRY)
              else "no", r.get(TrialAttr.RETRY_OF)] for r in fail_rows],
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
