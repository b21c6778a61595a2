"""The saved best model of a study: load it, export it as a file, predict with it.

>>> from search import load_model
>>> model = load_model("digits-demo", storage="sqlite:///demo.db")  # doctest: +SKIP
>>> model(raw_features).argmax(1)  # doctest: +SKIP
"""

from __future__ import annotations

import io
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import storage as st
from storage import StudyAttr

from ._artifacts import ENV, read_artifact, resolve_artifacts, unpack_model
from ._errors import UsageError
from ._spec import SpecError, parse_spec

if TYPE_CHECKING:
    from trials._export import ScaledModel

__all__ = ["Predictions", "export_model", "load_fold_models", "load_model", "load_model_file", "model_bytes",
           "predict", "write_predictions"]


def model_bytes(name: str, *, storage: str | None = None, artifacts: str | None = None) -> bytes:
    """The model file of study ``name``'s best trial, as saved by its final refit (``artifacts``: as
    :func:`load_model` finds the store).

    Raises
    ------
    UsageError
        No such study, no saved model (not refit yet, refit before models were saved, or no artifact
        store), or an artifact directory that does not hold it.
    """
    url = st.resolve_url(storage)
    attrs = st.study_attrs(st.create_engine(url, create=False), name)
    test = attrs.get(StudyAttr.TEST_RESULT) or {}
    artifact_id = test.get("model_artifact")
    if not artifact_id:
        trainable = (attrs.get(StudyAttr.SPEC) or {}).get("trainable")
        if trainable:
            raise UsageError(f"study {name!r} has no saved model: it was trained by your own training function "
                             f"(trainable {trainable}), whose model hpsearch does not save (it cannot rebuild your "
                             "architecture); save it in your function, e.g. torch.save(model, ...) when ctx.fold is "
                             "None (the refit)")
        if not test:
            why = f"its final refit has not run yet (`hpsearch resume {shlex.quote(name)}` runs it)"
        else:
            why = ("its final refit ran without an artifact store (a storage that is not a SQLite file, without "
                   "--artifacts) or before hpsearch saved models; a finished refit is not redone: run the study "
                   "file again under a new name (--study NAME) with --artifacts DIR")
        raise UsageError(f"study {name!r} has no saved model: {why}")
    # the store given, else the one the refit saved the model to, else the default one
    path = resolve_artifacts(url, artifacts) if artifacts is not None else test.get("model_store")
    path = path if path is not None else resolve_artifacts(url, None)
    if path is None:
        raise UsageError(f"study {name!r} saved its model to an artifact directory, and the storage is not a SQLite "
                         f"file beside which it would be: pass --artifacts DIR (or set ${ENV}) with the directory "
                         "the run saved it to")
    return read_artifact(path, artifact_id)


def _target_of(meta: dict[str, Any]) -> tuple[float, float] | None:
    """A regression model's target statistics ``(mean, scale)``; None for a classifier."""
    if meta.get("task", "classification") != "regression":
        return None
    return float(meta["target_mean"]), float(meta["target_scale"])


def _build(data: bytes, source: str) -> ScaledModel:
    import torch

    from trials import resolve_hyperparams
    from trials._export import build_model

    meta, weights = unpack_model(data, source)
    try:
        spec = parse_spec(meta["spec"], source=f"spec in {source}", stored=True)
    except SpecError as e:
        raise UsageError(str(e)) from None
    hp = resolve_hyperparams(spec.settings, meta["params"])
    state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
    try:
        model = build_model(hp, state, n_features=meta["n_features"], n_classes=meta["n_classes"],
                            mean=meta["feature_mean"], scale=meta["feature_scale"], classes=meta["classes"],
                            input_shape=meta["input_shape"], target=_target_of(meta),
                            scaling=meta.get("scaling", "per_feature"))
    except ValueError as e:
        raise UsageError(f"{source}: {e}") from None
    model.metadata = meta  # type: ignore[assignment]  # what it was trained on and how it scored
    return model


def load_model(name: str, *, storage: str | None = None, artifacts: str | None = None) -> ScaledModel:
    """The best model of study ``name``: an ``nn.Module`` in eval mode that takes raw (unscaled) inputs.

    It is the final refit's network (a ``model.factory`` model rebuilt through its factory, which must
    be importable here) behind the feature scaling of its training rows: ``model(x)`` maps
    ``[batch, *input_shape]`` raw features to ``[batch, n_classes]`` logits; ``model.predict(x)``
    gives class labels, ``model.classes`` the label of each output, ``model.metadata`` the spec,
    params and test result it was saved with.

    Parameters
    ----------
    storage
        Database URL (else ``HPSEARCH_STORAGE``, else ``sqlite:///hpsearch.db``).
    artifacts
        The artifact store to read it from: a directory or ``s3://BUCKET/PREFIX``. Else the store the refit
        saved it to (``test_result.model_store``), else ``HPSEARCH_ARTIFACTS``, else beside the SQLite file.
    """
    return _build(model_bytes(name, storage=storage, artifacts=artifacts), f"the model of study {name!r}")


def load_fold_models(name: str, *, storage: str | None = None, artifacts: str | None = None) -> list[ScaledModel]:
    """The fold models of study ``name``'s best trial, kept by ``checkpoint.keep_best``: one ``nn.Module``
    per fold (in fold order, eval mode) that takes raw inputs (scaled as its fold's training rows were),
    with each fold's best weights; average their outputs for an ensemble.

    The built-in MLP of a classification study only (a ``model.factory``'s or a ``trainable``'s
    checkpoint keeps its files, read with :func:`trials._checkpoint.read_checkpoint`).

    Raises
    ------
    UsageError
        No such study, no kept checkpoint (``checkpoint.keep_best`` off, no trial completed), a file
        that is gone or unreadable, or a study this loader cannot rebuild.
    """
    from trials import open_location, resolve_hyperparams
    from trials._checkpoint import CheckpointUnusable, checkpoint_files, read_checkpoint
    from trials._export import ScaledModel, build_module

    url = st.resolve_url(storage)
    attrs = st.study_attrs(st.create_engine(url, create=False), name)
    kept = attrs.get(StudyAttr.KEPT_CHECKPOINT)
    if not kept:
        raise UsageError(f"study {name!r} keeps no fold models: set checkpoint.keep_best: true (with "
                         "checkpoint.every_epochs or every_s) in its study file; the next trial that becomes the "
                         "best keeps its checkpoint")
    try:
        spec = parse_spec(attrs[StudyAttr.SPEC], source=f"stored spec of study {name!r}", stored=True)
    except SpecError as e:
        raise UsageError(str(e)) from None
    if spec.trainable is not None or spec.model.factory is not None or spec.task != "classification":
        raise UsageError(f"study {name!r}: load_fold_models rebuilds the built-in MLP of a classification study; "
                         f"read the kept checkpoint {kept['checkpoint']} in {kept['directory']} with "
                         "trials._checkpoint.read_checkpoint")
    directory = resolve_artifacts(url, artifacts) if artifacts is not None else str(kept["directory"])
    assert directory is not None
    parts = [n for n in checkpoint_files(directory, str(kept["checkpoint"])) if not n.startswith(".")]
    if not parts:
        raise UsageError(f"the kept checkpoint {kept['checkpoint']} of study {name!r} is not in {directory!r}; pass "
                         "the directory the study saved it to with --artifacts DIR (or artifacts=...)")
    hp = resolve_hyperparams(spec.settings, _trial_params(url, name, int(kept["trial"])))
    classes = attrs.get(StudyAttr.CLASSES)
    models: list[tuple[int, ScaledModel]] = []
    for part in parts:
        try:
            _, state = read_checkpoint(directory, part, None)
        except CheckpointUnusable as e:
            raise UsageError(f"study {name!r}: {e}") from None
        ens = state.get("ensemble")
        if ens is None:
            raise UsageError(f"the kept checkpoint {open_location(directory).where(part)} was saved before its trial "
                             "ended (an hpsearch without the final save of checkpoint.keep_best); it holds no fold "
                             "models")
        n_layers = len(state["best_state"]) // 2
        weights, biases = state["best_state"][:n_layers], state["best_state"][n_layers:]
        n_classes = int(weights[-1].shape[-1])
        slot = kept.get("slot")  # the file is a stack's: the trial's members are those of its group
        for m, fold in enumerate(ens["folds"]):
            if slot is not None and int(ens.get("groups", [0] * len(ens["folds"]))[m]) != int(slot[0]):
                continue
            net = build_module(hp, [int(x) for x in ens["input_shape"]], n_classes)
            sd = {}
            for i, (w, b) in enumerate(zip(weights, biases)):  # as trials._export.member_state_dict
                sd[f"{3 * i}.weight"] = w[m].t().contiguous()
                sd[f"{3 * i}.bias"] = b[m, 0].contiguous()
            net.load_state_dict(sd, strict=True)
            model = ScaledModel(net, ens["mean"][m].tolist(), ens["scale"][m].tolist(),
                                classes=list(classes) if classes is not None else list(range(n_classes)),
                                input_shape=ens["input_shape"],
                                scaling=str(attrs.get(StudyAttr.SCALING) or "per_feature"))
            models.append((int(fold), model.eval()))
    return [m for _, m in sorted(models, key=lambda fm: fm[0])]


def _trial_params(url: str, name: str, number: int) -> dict[str, Any]:
    """The params of trial ``number`` of study ``name``."""
    import optuna

    study = optuna.load_study(study_name=name, storage=st.create_storage(url))
    return dict(study.trials[number].params)


def load_model_file(path: str | Path) -> ScaledModel:
    """A model file written by :func:`export_model` (``hpsearch export-model``), as :func:`load_model` returns it."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read the model file {str(path)!r}: {e.strerror or e}") from None
    return _build(data, repr(str(path)))


def export_model(name: str, out: str | Path, *, storage: str | None = None, artifacts: str | None = None) -> Path:
    """Write study ``name``'s saved model to the file ``out`` (read it with :func:`load_model_file`)."""
    data = model_bytes(name, storage=storage, artifacts=artifacts)
    out = Path(out)
    try:
        if out.parent and not out.parent.exists():
            out.parent.mkdir(parents=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, out)
    except OSError as e:
        raise UsageError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
    return out


@dataclass(frozen=True)
class Predictions:
    """One prediction per input row: the class label and the probability of each class (a
    regression: the predicted value, with no probabilities and no classes)."""

    labels: list[Any]
    probabilities: list[list[float]]
    classes: list[Any]

    def rows(self) -> list[dict[str, Any]]:
        """``{"row", "prediction", "p_<class>"...}`` per input row."""
        return [{"row": i, "prediction": label, **{f"p_{c}": p for c, p in zip(self.classes, probs)}}
                for i, (label, probs) in enumerate(zip(self.labels, self.probabilities))]


def predict(name: str, data: str | Path, *, storage: str | None = None, artifacts: str | None = None,
            batch_size: int = 4096) -> Predictions:
    """Predict with study ``name``'s saved model on the rows of the file ``data``, read as the study
    reads its data (``trials._features.load_features``: the ``data.target`` and ``cv.groups`` columns, if
    present, are left out).

    Raises
    ------
    UsageError, DataError
        No saved model; an unreadable file; rows of another width than the model takes.
    """
    import torch

    from trials._features import load_features

    model = load_model(name, storage=storage, artifacts=artifacts)
    spec = parse_spec(model.metadata["spec"], stored=True)  # type: ignore[index]
    X = load_features(spec.data, str(data), spec.cv.groups)
    want = int(model.metadata["n_features"])  # type: ignore[index]
    if X.shape[1] != want:
        shape = list(model.input_shape)
        sample = f" (samples of shape {shape})" if len(shape) > 1 else ""
        raise UsageError(f"{str(data)!r} has {X.shape[1]} feature columns (values per sample); the model of study "
                         f"{name!r} takes {want}{sample} (the columns of its training data, without "
                         f"{spec.data.target or 'the label'})")
    labels: list[Any] = []
    probs: list[list[float]] = []
    with torch.no_grad():
        if model.target is not None:  # regression: the value, in the target's units
            for start in range(0, len(X), batch_size):
                labels += model(torch.from_numpy(X[start:start + batch_size]))[:, 0].tolist()
            return Predictions(labels, [[] for _ in labels], [])
        for start in range(0, len(X), batch_size):
            p = torch.softmax(model(torch.from_numpy(X[start:start + batch_size])), dim=-1)
            probs += p.tolist()
            labels += [model.classes[i] for i in p.argmax(-1).tolist()]
    return Predictions(labels, probs, list(model.classes))


def write_predictions(pred: Predictions, out: str | Path | None) -> None:
    """CSV with one row per input (``row``, ``prediction``, ``p_<class>``...) to ``out``, or stdout."""
    import csv
    import sys

    rows = pred.rows()
    header = ["row", "prediction", *[f"p_{c}" for c in pred.classes]]
    if out is None:
        writer = csv.DictWriter(sys.stdout, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
        return
    try:
        with open(out, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
    except OSError as e:
        raise UsageError(f"cannot write {str(out)!r}: {e.strerror or e}") from None
