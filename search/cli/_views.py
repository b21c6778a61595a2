"""``hpsearch ls``, ``show`` and ``best``: the read-only views (``--output json`` is a contract)."""

from __future__ import annotations

import shlex

import click

from ._common import OUTPUT, STORAGE, echo_json, fmt, table, user_errors
from ._serve import SERVER, TOKEN, client_errors, make_client

__all__ = ["best", "ls_", "show"]


@click.command("ls")
@STORAGE
@SERVER
@TOKEN
@OUTPUT
@user_errors
@client_errors
def ls_(storage: str | None, server: str | None, token: str | None, output: str) -> None:
    """List the studies in the storage, or on a server (--server: with their queue state)."""
    if server:
        studies = make_client(server, token).studies()
    else:
        from ..inspect import list_studies

        studies = list_studies(storage)
    if output == "json":
        echo_json({"studies": studies})
        return
    if not studies:
        click.echo("no studies")
        return
    header = ["study", "strategy", "direction", "done", "running", "failed", "best"]
    rows = [[s["name"], s.get("strategy"), s["direction"], s["n_complete"] + s["n_pruned"],
             s["n_running"], s["n_fail"], s["best_value"]] for s in studies]
    if server:  # the queue's state too: queued studies have no trial yet
        header.append("state")
        for row, s in zip(rows, studies):
            row.append(s.get("state"))
    table(header, rows)


def _note(t: dict) -> str:
    """Why a trial failed, and whose re-run it is."""
    rerun = f"re-run of #{t['retry_of']}" if t.get("retry_of") is not None else ""
    resumed = f"went on from epoch {t['resumed_from_epoch']}" if t.get("resumed_from_epoch") is not None else ""
    return "; ".join(x for x in (t.get("fail_reason") or "", rerun, resumed) if x)


@click.command()
@click.argument("name")
@STORAGE
@OUTPUT
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N trials.")
@click.option("--sort", type=click.Choice(["number", "best"]), default="number", show_default=True)
@user_errors
def show(name: str, storage: str | None, output: str, limit: int | None, sort: str) -> None:
    """Table of the trials of study NAME."""
    from ..inspect import show_study

    out = show_study(name, storage, limit=limit, order=sort)
    if output == "json":
        echo_json(out)
        return
    rows = []
    for t in out["trials"]:
        value = fmt(t["value"]) + (f" ± {t['value_std']:.3g}" if t.get("value_std") is not None else "")
        params = " ".join(f"{k}={fmt(v)}" for k, v in t["params"].items())
        rows.append([t["number"], t["state"], value, params, fmt(t.get("epochs")),
                     fmt(t.get("duration_s")), _note(t)])
    click.echo(f"study {out['study']!r} ({out['direction']}, metric {out.get('metric')})")
    table(["#", "state", "value", "params", "epochs", "seconds", "note"], rows)
    ck = out.get("checkpoints")
    if ck is not None and ck["directory"] is None:
        click.echo("checkpoints: their directory is not known here (set $HPSEARCH_ARTIFACTS to the run's --artifacts)")
    elif ck is not None:
        click.echo(f"checkpoints: {ck['files']} file(s), {ck['bytes'] / 1e6:.1f} MB in {ck['directory']} (deleted as "
                   "each trial finishes)")
    if ck is not None and ck.get("kept"):
        click.echo(f"kept (checkpoint.keep_best): the checkpoint of trial {ck['kept']['trial']}, "
                   f"{ck['kept']['checkpoint']} in {ck['kept']['directory']}")


@click.command()
@click.argument("name")
@STORAGE
@OUTPUT
@user_errors
def best(name: str, storage: str | None, output: str) -> None:
    """The best trial of study NAME: params, CV score, per-fold scores, held-out test score."""
    from ..inspect import best_of

    out = best_of(name, storage)
    if output == "json":
        echo_json(out)
        return
    click.echo(f"study {out['study']!r}: best trial {out['number']}")
    click.echo(f"  {out['metric']}: {out['value']:.4g} ± {out['value_std'] or 0:.3g} over folds")
    click.echo("  fold scores: " + ", ".join(f"{s:.4g}" for s in out["fold_scores"]))
    for k, v in out["params"].items():
        click.echo(f"  {k}: {fmt(v)}")
    ts = out.get("test_score")
    why = f" (the refit failed: {out['refit_error']})" if out.get("refit_error") else " (not refit yet)"
    click.echo(f"  held-out test score: {fmt(ts)}" + ("" if ts is not None else why))
    test = out.get("test_result") or {}
    if test.get("refit_epochs") is not None:
        how = ("the median of the folds' best epochs " + str(test.get("fold_epochs"))
               if test.get("refit_mode") == "cv_median" else "early stopping on an inner split")
        click.echo(f"  refit: {test['refit_epochs']} epochs ({how}) on {test.get('train_rows')} rows")
    if test.get("model_artifact"):
        export = f"hpsearch export-model {shlex.quote(out['study'])} --out FILE"
        click.echo(f"  model: artifact {test['model_artifact']} (`{export}`)")
