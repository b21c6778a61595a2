"""Opening a study for a run: create it, or load it and check its stored spec and data against this run's."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import optuna

from storage import StudyAttr
from trials import factory_name

from . import __version__
from ._errors import UsageError
from ._orchestrator import count_done
from ._spec import SpecError, StudySpec, parse_spec
from ._strategies import make_pruner, make_sampler

__all__ = ["check_data", "drop_if_empty", "nothing_to_do", "open_study", "spec_diff"]

_log = logging.getLogger(__name__)
# keys that may change between invocations of one study: how much and where, not what (``refit``
# decides only the final refit, not what a trial scores; studies stored before it existed lack it;
# ``checkpoint`` decides how often a trial saves its state, and a resumed trial scores what it would have)
_MUTABLE_PREFIXES = ("n_trials", "resources.", "refit.", "checkpoint.")


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def spec_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Readable lines ``key: old -> new`` for every leaf that differs."""
    a, b = _flatten(old), _flatten(new)
    lines = []
    for k in sorted(set(a) | set(b)):
        if a.get(k, "<absent>") != b.get(k, "<absent>"):
            lines.append(f"{k}: {json.dumps(a.get(k, '<absent>'))} -> {json.dumps(b.get(k, '<absent>'))}")
    return lines


def _with_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored spec with the keys added since it was stored at their defaults (``task``,
    ``training.loss`` ...), so that a study file unchanged since then still resumes its study."""
    try:
        return parse_spec(stored, stored=True).to_dict()
    except SpecError:  # shown as stored: the diff then names what no longer parses
        return stored


def open_study(
    storage: optuna.storages.BaseStorage, spec: StudySpec, *, must_exist: bool
) -> tuple[optuna.Study, list[str], bool]:
    """Create the study, or load it and check its stored spec against ``spec``; True if created."""
    messages: list[str] = []
    try:
        study_id = storage.get_study_id_from_name(spec.name)
    except KeyError:
        study_id = None
    if study_id is None:
        if must_exist:
            raise UsageError(f"no study named {spec.name!r}")
        study = optuna.create_study(
            storage=storage, study_name=spec.name, direction=spec.study_direction,
            sampler=make_sampler(spec), pruner=make_pruner(spec),
        )
        study.set_user_attr(StudyAttr.SPEC, spec.to_dict())
        study.set_user_attr(StudyAttr.VERSION, __version__)
        return study, messages, True
    n_existing = len(storage.get_all_trials(study_id, deepcopy=False))
    study = optuna.load_study(
        study_name=spec.name, storage=storage,
        sampler=make_sampler(spec, n_existing_trials=n_existing), pruner=make_pruner(spec),
    )
    stored = study.user_attrs.get(StudyAttr.SPEC)
    if stored is None and not must_exist and n_existing == 0 and not study.user_attrs \
            and study.direction.name.lower() == spec.study_direction:
        # created by a run that was killed before it stored the spec (two writes, not one): adopt it
        study.set_user_attr(StudyAttr.SPEC, spec.to_dict())
        study.set_user_attr(StudyAttr.VERSION, __version__)
        return study, messages, False
    if stored is None:
        raise UsageError(
            f"study {spec.name!r} exists but was not created by hpsearch (no stored spec); "
            "choose another name with --study NAME"
        )
    diff = spec_diff(_with_defaults(stored), spec.to_dict())
    fixed = [d for d in diff if not d.startswith(_MUTABLE_PREFIXES)]
    if fixed and n_existing == 0 and not must_exist:
        # no trial yet (a first run stopped before its first trial, e.g. on a typo'd data path):
        # nothing to mix, so the corrected spec replaces it (its direction may differ: a new study)
        optuna.delete_study(study_name=spec.name, storage=storage)
        study, _, _ = open_study(storage, spec, must_exist=False)
        return study, [f"study {spec.name!r} had no trials yet; its spec was replaced ({', '.join(fixed)})"], True
    if fixed:
        raise UsageError(
            f"study {spec.name!r} already exists with a different spec; refusing to mix results. Changed:\n  "
            + "\n  ".join(fixed)
            + "\nRun it under a new name (--study NEW_NAME), or undo the change to resume it."
        )
    if diff:
        study.set_user_attr(StudyAttr.SPEC, spec.to_dict())
        messages.append("updated " + ", ".join(diff))
    return study, messages, False


def nothing_to_do(study: optuna.Study, spec: StudySpec, refit: bool) -> bool:
    """The budget is used, no trial is left to recover or run, and the final refit (if asked) is
    stored, or recorded failed."""
    trials = study.get_trials(deepcopy=False)
    # a WAITING re-run the budget no longer needs (it was lowered) is no reason to start the backend
    if any(t.state == optuna.trial.TrialState.RUNNING for t in trials) or count_done(trials) < spec.budget:
        return False
    if not refit or not any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        return True
    best = study.best_trial.number
    attrs = study.user_attrs
    done = [attrs.get(StudyAttr.TEST_RESULT), attrs.get(StudyAttr.REFIT_ERROR)]  # a failed refit is not redone
    return any(d and d.get("trial") == best for d in done)


def drop_if_empty(storage: optuna.storages.BaseStorage, name: str) -> None:
    """Delete study ``name`` if it has no trial (best effort: the error being raised matters more)."""
    try:
        if not storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False):
            optuna.delete_study(study_name=name, storage=storage)
    except Exception as e:
        _log.debug("could not drop the empty study %r: %s", name, e)


def check_data(
    study: optuna.Study, spec: StudySpec, fingerprint: str, classes: Sequence[Any] | None = None
) -> None:
    """Refuse to continue a study on data other than what its trials were scored on.

    The first run stores the data's fingerprint (:meth:`trials.Dataset.fingerprint`) and, for
    classification, its ``classes`` (the original labels in code order, ``hpsearch_classes``,
    so that a prediction can be mapped back to them); a study created before fingerprints (or
    classes) were stored adopts the data of its next run.
    """
    attrs = study.user_attrs
    stored = attrs.get(StudyAttr.DATA_FINGERPRINT)
    if classes is not None and stored in (None, fingerprint) and attrs.get(StudyAttr.CLASSES) is None:
        study.set_user_attr(StudyAttr.CLASSES, list(classes))
    if stored is None:
        study.set_user_attr(StudyAttr.DATA_FINGERPRINT, fingerprint)
        return
    if stored != fingerprint:
        d = spec.data
        what = (f"data.path {d.path!r}" if d.path else f"data.factory {factory_name(d.factory)!r}"
                if d.factory is not None else f"data.source {d.source!r}")
        raise UsageError(
            f"the data of study {spec.name!r} changed since its trials were scored ({what}: fingerprint "
            f"{fingerprint[:12]} now, {stored[:12]} when the study started); continuing would mix scores of "
            "two data sets. Restore the original data to resume, or run the new data as a new study "
            "(--study NEW_NAME)"
        )


def check_scaling(study: optuna.Study, scaling: str) -> str:
    """The feature scaling the study's trials use: ``scaling`` (``Dataset.scaling``) for a new study,
    stored with it (``hpsearch_scaling``); the stored one for a study that has it.

    A study whose trials were scored before ``data.scaling`` existed (it has a data fingerprint but
    no stored scaling) scaled every feature on its own: it continues with ``per_feature``, which is
    then stored, so that its later trials are scored as its first ones were. Call it before
    :func:`check_data` (which stores the fingerprint of a new study).
    """
    attrs = study.user_attrs
    stored = attrs.get(StudyAttr.SCALING)
    if stored is not None:
        return str(stored)
    if attrs.get(StudyAttr.DATA_FINGERPRINT) is not None and scaling != "per_feature":
        logging.getLogger(__name__).info("study %r predates data.scaling: its trials keep per_feature scaling",
                                         study.study_name)
        scaling = "per_feature"
    study.set_user_attr(StudyAttr.SCALING, scaling)
    return scaling
