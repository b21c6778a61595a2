"""The final refit scores what the CV measured (issue 16, section 1's acceptance).

For each data set a small hpsearch study runs (:func:`search.run_study` on the in-process
:class:`search.LocalBackend`, one trial at a time, fresh SQLite file, real training, random search
over ``lr``, ``dropout`` and ``batch_size``, 3-fold CV, early stopping on ``val_loss``), then its
final refit with the default ``refit.epochs: cv_median`` (every non-test row, no inner split, the
median of the best trial's fold best epochs). Compared on the same held-out test split:

- ``cv``: the best trial's CV accuracy (mean over folds) and its fold std;
- ``refit_cv_median``: the stored test accuracy of the study's refit;
- ``refit_early_stopping``: :func:`trials.refit_and_test` with ``epochs=None`` (the refit before this
  change: an inner 20 % split, early stopping, best epoch restored), same params and seed;
- ``plain``: a plain PyTorch loop (``nn.Sequential`` of ``nn.Linear``, ``torch.optim``,
  ``StandardScaler`` statistics of the training rows, reshuffled mini-batches, no early stopping)
  with the same params, trained on the same rows for the same ``cv_epochs``, over several seeds
  (mean and std);
- ``plain_fold_rows``: the same loop on one fold's training rows only (``(k-1)/k`` of them, what each
  CV model saw), on the same test rows: the difference to ``plain`` is what the refit gains from
  its larger training set, so a refit above the CV score by that much is not a defect.

"Within noise": the refit against the plain loop (same test rows, so only the seed varies) when
``|refit - plain mean| <= 2 x plain std over seeds`` (at least 0.5 % accuracy); the refit against
the CV (other rows) when ``|refit - cv| <= 2 x sqrt(p (1 - p) / n_test + fold_std**2 / k)``, and
the same after subtracting ``plain - plain_fold_rows`` (what more training rows are worth) from the
difference.

Usage::

    .venv/bin/python -m bench.bench_refit --out bench/results          # digits + synthetic 20000 x 40, 10 classes
    .venv/bin/python -m bench.bench_refit --smoke --out artifacts/bench-smoke
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import report_header, stats, write_json

SPACE: dict[str, Any] = {
    "lr": {"type": "float", "low": 3e-3, "high": 0.1, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "batch_size": {"type": "categorical", "choices": [32, 64, 128]},
}


def datasets(smoke: bool) -> dict[str, dict[str, Any]]:
    if smoke:
        return {"digits": {"source": "digits"},
                "synthetic": {"source": "synthetic", "n_samples": 1500, "n_features": 20, "n_classes": 4,
                              "n_informative": 10}}
    return {"digits": {"source": "digits"},
            "synthetic": {"source": "synthetic", "n_samples": 20000, "n_features": 40, "n_classes": 10,
                          "n_informative": 20}}


def plain_loop(X: Any, y: Any, X_test: Any, y_test: Any, params: dict[str, Any], settings: Any, *,
               epochs: int, n_classes: int, seed: int) -> float:
    """Test accuracy of the textbook loop: standardize, train ``epochs`` epochs, evaluate once."""
    import numpy as np
    import torch
    from torch import nn

    from trials import resolve_hyperparams

    hp = resolve_hyperparams(settings, params)
    torch.manual_seed(seed)
    mean, std = X.mean(axis=0), X.std(axis=0)
    std[std < 1e-12] = 1.0
    Xt = torch.from_numpy(((X - mean) / std).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.int64))
    sizes = [X.shape[1], *hp.hidden, n_classes]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers += [nn.ReLU(), nn.Dropout(hp.dropout)]
    net = nn.Sequential(*layers)
    opt = (torch.optim.SGD(net.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
           if hp.optimizer == "sgd" else torch.optim.Adam(net.parameters(), lr=hp.lr, weight_decay=hp.weight_decay))
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(len(yt))
        for s in range(0, len(yt), hp.batch_size):
            b = perm[s:s + hp.batch_size]
            opt.zero_grad()
            loss_fn(net(Xt[b]), yt[b]).backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        pred = net(torch.from_numpy(((X_test - mean) / std).astype(np.float32))).argmax(1).numpy()
    return float((pred == y_test).mean())


def run_dataset(tmp: Path, name: str, data: dict[str, Any], *, n_trials: int, max_epochs: int,
                plain_seeds: int) -> dict[str, Any]:
    from search import LocalBackend, run_study
    from search._spec import parse_spec
    from trials import load_dataset, refit_and_test

    raw = {"name": f"refit-{name}", "strategy": "random", "n_trials": n_trials, "seed": 0, "space": SPACE,
           "data": data, "model": {"hidden": [128, 128]},
           "training": {"max_epochs": max_epochs, "patience": 5}, "cv": {"folds": 3}}
    spec = parse_spec(raw)
    t0 = time.perf_counter()
    res = run_study(spec, storage=f"sqlite:///{tmp / (name + '.db')}", backend=LocalBackend(1))
    search_s = time.perf_counter() - t0
    assert res.best is not None and res.test_result is not None
    test = res.test_result
    ds = load_dataset(spec.data, spec.cv, spec.seed)
    import optuna

    import storage as st

    study = optuna.load_study(study_name=spec.name, storage=st.create_storage(f"sqlite:///{tmp / (name + '.db')}"))
    seed = int(study.best_trial.user_attrs["seed"])
    t0 = time.perf_counter()
    old = refit_and_test(ds, res.best.params, spec.settings, seed=seed, epochs=None)
    old_s = time.perf_counter() - t0
    plain = [plain_loop(ds.X, ds.y, ds.X_test, ds.y_test, res.best.params, spec.settings,
                        epochs=test["cv_epochs"], n_classes=ds.n_classes, seed=s) for s in range(plain_seeds)]
    ps = stats(plain)
    # the same loop on one fold's training rows ((k-1)/k of them): what the CV models could learn, on the
    # test rows; the refit trains on k/(k-1) times as many rows, which may score above the CV estimate
    tr = ds.folds[0][0]
    fold_rows = [plain_loop(ds.X[tr], ds.y[tr], ds.X_test, ds.y_test, res.best.params, spec.settings,
                            epochs=test["cv_epochs"], n_classes=ds.n_classes, seed=s) for s in range(plain_seeds)]
    fs = stats(fold_rows)
    cv, fold_std, k, n_test = res.best.value, res.best.value_std or 0.0, spec.cv.folds, len(ds.y_test)
    refit = test["test_accuracy"]
    se_cv = math.sqrt(refit * (1 - refit) / n_test + fold_std ** 2 / k)
    plain_tol = 2 * max(ps["std"] or 0.0, 0.005)
    out = {
        "data": ds.name, "rows": len(ds.y), "test_rows": n_test, "search_s": round(search_s, 1),
        "best_params": res.best.params, "fold_epochs": test["fold_epochs"], "cv_epochs": test["cv_epochs"],
        "cv": cv, "cv_fold_std": fold_std,
        "refit_cv_median": refit, "refit_cv_median_epochs": test["refit_epochs"],
        "refit_early_stopping": old.test_accuracy, "refit_early_stopping_epoch": old.best_epoch,
        "refit_early_stopping_s": round(old_s, 2),
        "plain": ps, "plain_scores": plain, "plain_fold_rows": fs, "plain_fold_rows_scores": fold_rows,
        "plain_gain_from_all_rows": (ps["mean"] or 0.0) - (fs["mean"] or 0.0),
        "refit_minus_cv": refit - cv, "cv_tolerance": 2 * se_cv,
        "refit_minus_plain": refit - (ps["mean"] or 0.0), "plain_tolerance": plain_tol,
    }
    out["within_noise_of_cv"] = abs(refit - cv) <= 2 * se_cv
    out["within_noise_of_plain"] = abs(refit - (ps["mean"] or 0.0)) <= plain_tol
    # the refit's distance to the CV score, less what the plain loop gains from all rows over a fold's
    out["refit_minus_cv_less_row_gain"] = refit - cv - out["plain_gain_from_all_rows"]
    out["within_noise_of_cv_after_row_gain"] = abs(out["refit_minus_cv_less_row_gain"]) <= 2 * se_cv
    print(f"{name}: cv {cv:.4f} ± {fold_std:.4f} (fold epochs {test['fold_epochs']} -> {test['cv_epochs']}); "
          f"refit cv_median {refit:.4f}, early_stopping {old.test_accuracy:.4f} (epoch {old.best_epoch}); "
          f"plain {ps['mean']:.4f} ± {ps['std']:.4f} over {plain_seeds} seeds "
          f"(on one fold's training rows: {fs['mean']:.4f} ± {fs['std']:.4f})", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_refit", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: 2 trials, 3 epochs, 2 plain seeds")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    result = report_header("bench_refit", args.smoke, argv)
    n_trials, max_epochs, plain_seeds = (2, 3, 2) if args.smoke else (8, 40, 5)
    result.update(n_trials=n_trials, max_epochs=max_epochs, plain_seeds=plain_seeds, runs={})
    goals = []
    with tempfile.TemporaryDirectory(prefix="bench-refit-") as tmp:
        for name, data in datasets(args.smoke).items():
            r = run_dataset(Path(tmp), name, data, n_trials=n_trials, max_epochs=max_epochs, plain_seeds=plain_seeds)
            result["runs"][name] = r
            goals.append({"goal": f"{name}: refit test accuracy within noise of the CV score",
                          "value": r["refit_minus_cv"], "met": bool(r["within_noise_of_cv"])})
            goals.append({"goal": f"{name}: refit minus CV, less the plain loop's gain from all rows over a fold's, "
                                  "within noise", "value": r["refit_minus_cv_less_row_gain"],
                          "met": bool(r["within_noise_of_cv_after_row_gain"])})
            goals.append({"goal": f"{name}: refit test accuracy within noise of a plain loop, same params and epochs",
                          "value": r["refit_minus_plain"], "met": bool(r["within_noise_of_plain"])})
    result["goals"] = goals
    write_json(args.out, "refit", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
