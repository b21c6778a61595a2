"""``hpsearch export`` and ``hpsearch report`` (and their Python API) on studies shaped like real ones."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path
from typing import Any

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from search.cli import main as cli_main
from search.inspect import export_frame, export_trials, write_export, write_report

from ..studies import build_study


def hpsearch() -> click.Group:
    """``hpsearch`` with the inspect commands, without touching the real group."""
    return click.Group("hpsearch", commands=dict(cli_main.commands))


def invoke(*args: str) -> Any:
    return CliRunner().invoke(hpsearch(), [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def demo(sqlite_url: str) -> str:
    build_study(sqlite_url, "demo")
    return sqlite_url


def show_trials(url: str, name: str = "demo") -> list[dict[str, Any]]:
    res = invoke("show", name, "--storage", url, "-o", "json")
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout)["trials"]


def _cell(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    if hasattr(v, "item"):  # numpy scalar
        v = v.item()
    if isinstance(v, float) and v.is_integer():
        return int(v)  # csv reads integer columns with gaps as float
    return v


def unflatten(df: pd.DataFrame) -> list[dict[str, Any]]:
    """The csv/parquet table back into show's row shape."""
    rows = []
    for rec in df.to_dict(orient="records"):
        row: dict[str, Any] = {"params": {}, "fold_scores": []}
        for k, v in rec.items():
            if k.startswith("param_"):
                if _cell(v) is not None:
                    row["params"][k.removeprefix("param_")] = _cell(v)
            elif re.fullmatch(r"fold_\d+", k):
                if _cell(v) is not None:
                    row["fold_scores"].append(_cell(v))
            else:
                row[k] = _cell(v)
        row["fold_scores"] = row["fold_scores"] or None
        rows.append(row)
    return rows


def normalized(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Integral floats as ints, so 32 == 32.0 compare equal after a csv round trip."""
    return [{k: _cell(v) if not isinstance(v, (dict, list)) else
             ({p: _cell(x) for p, x in v.items()} if isinstance(v, dict) else [_cell(x) for x in v])
             for k, v in r.items()} for r in rows]


def test_export_json_csv_parquet_round_trip_equal_show(demo: str, tmp_path: Path) -> None:
    shown = show_trials(demo)
    assert [t["state"] for t in shown].count("FAIL") == 2 and len(shown) == 11

    res = invoke("export", "demo", "--format", "json", "--storage", demo)
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == shown

    res = invoke("export", "demo", "--format", "csv", "--storage", demo)
    assert res.exit_code == 0, res.output
    df = pd.read_csv(io.StringIO(res.stdout))
    assert list(df.columns) == [
        "number", "state", "value", "value_std", "param_lr", "param_dropout", "param_batch_size",
        "fold_0", "fold_1", "fold_2", "epochs", "duration_s", "fail_reason", "node", "retry_of", "resumed_from_epoch",
    ]
    assert normalized(unflatten(df)) == normalized(shown)

    out = tmp_path / "trials.parquet"
    res = invoke("export", "demo", "-f", "parquet", "--out", out, "--storage", demo)
    assert res.exit_code == 0, res.output
    table = pd.read_parquet(out)
    assert str(table["epochs"].dtype) == "Int64" and str(table["param_batch_size"].dtype) == "Int64"
    assert unflatten(table) == shown  # parquet keeps types: exact equality

    # the Python API agrees with the CLI, and --out writes the same csv as stdout
    assert export_trials("demo", storage_url=demo) == shown
    path = write_export("demo", "csv", tmp_path / "t.csv", storage_url=demo)
    assert path is not None and path.read_text() == res_csv(demo)


def res_csv(url: str) -> str:
    buf = io.StringIO()
    assert write_export("demo", "csv", storage_url=url, stream=buf) is None
    return buf.getvalue()


def test_export_errors(demo: str, tmp_path: Path) -> None:
    res = invoke("export", "demo", "--format", "parquet", "--storage", demo)
    assert res.exit_code == 2
    assert res.stderr.startswith("hpsearch: error: parquet is a binary format; give a file with --out")
    res = invoke("export", "nope", "--storage", demo)
    assert res.exit_code == 2 and "hpsearch: error:" in res.stderr and "nope" in res.stderr
    res = invoke("export", "demo", "--out", tmp_path / "missing" / "x.csv", "--storage", demo)
    assert res.exit_code == 2 and "does not exist" in res.stderr
    res = invoke("export", "demo", "--storage", f"sqlite:///{tmp_path / 'absent.db'}")
    assert res.exit_code == 3 and "does not exist" in res.stderr


def test_export_frame_types() -> None:
    rows = [
        {"number": 0, "state": "COMPLETE", "value": 0.5, "value_std": 0.0, "params": {"opt": "sgd", "h": 8},
         "fold_scores": [0.5], "epochs": 3, "duration_s": 1.0, "fail_reason": None, "node": "a",
         "retry_of": None},
        {"number": 1, "state": "FAIL", "value": None, "value_std": None, "params": {"opt": 3},
         "fold_scores": None, "epochs": None, "duration_s": None, "fail_reason": "boom", "node": "a",
         "retry_of": 0},
    ]
    df = export_frame(rows)
    assert list(df["param_opt"]) == ["sgd", "3"]  # mixed choices become text
    assert str(df["param_h"].dtype) == "Int64" and df["param_h"].isna().tolist() == [False, True]
    assert df["retry_of"].tolist()[1] == 0 and math.isnan(df["fold_0"][1])
    assert export_frame([]).columns[0] == "number"


def test_report_html_and_pngs(demo: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    res = invoke("report", "demo", "--out", out, "--storage", demo)
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()

    best = show_trials(demo)
    best_row = max((t for t in best if t["state"] == "COMPLETE"), key=lambda t: t["value"])
    n = best_row["number"]
    pngs = {p.name for p in out.glob("*.png")}
    assert {"optimization_history.png", "param_importances.png", "parallel_coordinate.png", "slice.png",
            "intermediate_values.png", f"curves_trial_{n}.png"} <= pngs
    assert len([p for p in pngs if p.startswith("curves_trial_")]) == 5
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # self-contained: every image inline, nothing fetched from anywhere
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert not re.search(r'(src|href)="(https?:)?//', page)
    # best params, CV score, test score, failure reasons, spec
    dl = page[page.index("Best configuration"):page.index("Search plots")]
    assert f"<dt>trial</dt><dd>{n}</dd>" in dl
    for k, v in best_row["params"].items():
        assert f"<dt>param {k}</dt><dd>{v:.6g}</dd>" in dl
    assert f"{best_row['value']:.4g}" in dl and "0.9321" in dl and "held-out test score" in dl
    assert "RuntimeError: CUDA out of memory (trial 10)" in page
    assert "&quot;strategy&quot;: &quot;random&quot;" in page
    assert page.count("<tr>") == 1 + 8 + 1 + 2  # best-10 table (8 complete) + failed table (2)


def test_report_before_refit_and_with_one_trial(sqlite_url: str, tmp_path: Path) -> None:
    import matplotlib

    build_study(sqlite_url, "tiny", n_complete=1, n_fail=0, n_pruned=0, refit=False)
    style = {k: v for k, v in matplotlib.rcParams.items() if k != "backend"}
    html = write_report("tiny", tmp_path, storage_url=sqlite_url).read_text()
    # optuna's plt.style.use("ggplot") does not leak out of the report
    assert {k: v for k, v in matplotlib.rcParams.items() if k != "backend"} == style
    assert "not refit yet" in html
    assert "parameter importances need at least 2 completed trials" in html
    assert not (tmp_path / "param_importances.png").exists()
    assert (tmp_path / "optimization_history.png").exists() and (tmp_path / "curves_trial_0.png").exists()
    assert "no trial failed" in html


def test_importances_skipped_when_undefined() -> None:
    import optuna
    from optuna.distributions import FloatDistribution

    from search.inspect._report import _importance_skip_reason

    def trial(**params: float) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(params=params, value=sum(params.values()),
                                         distributions={k: FloatDistribution(0, 1) for k in params})

    assert "at least 2 completed" in _importance_skip_reason([trial(a=0.1)])
    assert "fewer than 2 varying parameters (varying: a)" in _importance_skip_reason(
        [trial(a=0.1, b=0.5), trial(a=0.2, b=0.5)])
    assert _importance_skip_reason([trial(a=0.1, b=0.5), trial(a=0.2, b=0.6)]) is None


def test_report_and_export_of_an_orchestrated_study(make_spec, sqlite_url: str, tmp_path: Path) -> None:
    from search import LocalBackend, run_study

    from .. import fakes

    result = run_study(make_spec(name="orch", n_trials=4, training={"max_epochs": 3}), storage=sqlite_url,
                       backend=LocalBackend(2), worker_fn=fakes.quadratic)
    assert result.best is not None and result.best.test_score is not None
    page = write_report("orch", tmp_path, storage_url=sqlite_url).read_text()
    dl = page[page.index("Best configuration"):page.index("Search plots")]
    assert f"<dt>trial</dt><dd>{result.best.number}</dd>" in dl
    assert f"{result.best.test_score:.4g}" in dl and "not refit yet" not in dl
    assert f"<dt>param lr</dt><dd>{result.best.params['lr']:.6g}</dd>" in dl
    assert (tmp_path / f"curves_trial_{result.best.number}.png").exists()
    assert export_trials("orch", storage_url=sqlite_url) == show_trials(sqlite_url, "orch")


def test_report_lists_out_of_memory_trials_recorded_pruned(sqlite_url: str, tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    from ..studies import DISTRIBUTIONS

    study = build_study(sqlite_url, "oomy", n_complete=2, n_fail=0, n_pruned=1, refit=False)
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 0.01, "dropout": 0.1, "batch_size": 64}, distributions=DISTRIBUTIONS,
        state=TrialState.PRUNED, user_attrs={"fail_reason": "out of memory at batch_size=64 on cuda:0", "oom": True},
    ))
    html = write_report("oomy", tmp_path, storage_url=sqlite_url).read_text()
    failed = html[html.index("Failed trials"):]
    assert "out of memory at batch_size=64 on cuda:0" in failed and "no (recorded PRUNED)" in failed
    assert failed.count("<tr>") == 2  # header + the OOM trial; the ordinary pruned trial is not listed


def test_report_of_an_unknown_study_creates_nothing(demo: str, tmp_path: Path) -> None:
    """Before, the output directory was created, then the unknown study refused."""
    res = invoke("report", "nope", "--out", tmp_path / "report", "--storage", demo)
    assert res.exit_code == 2 and "nope" in res.stderr
    assert not (tmp_path / "report").exists()
