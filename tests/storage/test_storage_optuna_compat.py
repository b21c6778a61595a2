"""Optuna's private APIs that hpsearch relies on still behave as storage/_optuna_compat.py expects.

An Optuna release that changes one of them fails here first, with the name of what changed.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.distributions import FloatDistribution

from storage import (
    create_storage,
    rdb_of,
    set_trial_intermediate_values,
    set_trial_user_attrs,
    study_id,
    study_storage,
    suggest,
    trial_id,
)
from storage._optuna_compat import FIXED_PARAMS

REPO = Path(__file__).resolve().parents[2]


def test_private_apis_behave_as_expected(sqlite_url: str) -> None:
    rdb = create_storage(sqlite_url)
    study = optuna.create_study(storage=rdb, study_name="compat")
    storage = study_storage(study)
    assert rdb_of(storage) is rdb  # Optuna's cache unwrapped
    assert storage.get_study_id_from_name("compat") == study_id(study)
    trial = study.ask()
    dist = FloatDistribution(0.0, 1.0)
    first = suggest(trial, "x", dist)
    assert suggest(optuna.Trial(study, trial_id(trial)), "x", dist) == first, "a value already set is kept"
    set_trial_user_attrs(storage, trial_id(trial), {"a": 1, "b": [2.0]})
    set_trial_intermediate_values(storage, trial_id(trial), {1: 0.5, 2: 0.25})
    frozen = storage.get_trial(trial_id(trial))
    assert frozen.user_attrs == {"a": 1, "b": [2.0]} and frozen.intermediate_values == {1: 0.5, 2: 0.25}


def test_no_private_optuna_api_outside_the_compat_module() -> None:
    needles = ("._storage", "._study_id", "._trial_id", "._suggest(", "optuna.storages._", "_without_commit")
    offenders = []
    for package in ("search", "storage", "trials", "bench"):
        for path in (REPO / package).rglob("*.py"):
            if path.name == "_optuna_compat.py":
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                code = line.split("#", 1)[0]
                if any(needle in code for needle in needles) and "``" not in code:
                    offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_enqueued_params_wait_in_the_fixed_params_system_attr(sqlite_url: str) -> None:
    study = optuna.create_study(storage=create_storage(sqlite_url), study_name="queued")
    study.enqueue_trial({"lr": 0.01, "batch_size": 32})
    waiting = study.get_trials(deepcopy=False)[0]
    assert waiting.state == optuna.trial.TrialState.WAITING and waiting.params == {}
    assert waiting.system_attrs[FIXED_PARAMS] == {"lr": 0.01, "batch_size": 32}


def test_an_artifact_recorded_on_a_finished_trial_is_what_optuna_lists(sqlite_url: str, tmp_path: Path) -> None:
    """hpsearch records the best model's artifact itself (an id chosen before a retried write);
    optuna.artifacts (and so optuna-dashboard) must list it as one of its own."""
    from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

    from storage import record_trial_artifact

    rdb = create_storage(sqlite_url)
    study = optuna.create_study(storage=rdb, study_name="art")
    trial = study.ask()
    (tmp_path / "f.bin").write_bytes(b"x")
    store = FileSystemArtifactStore(tmp_path)
    ref = upload_artifact(artifact_store=store, file_path=str(tmp_path / "f.bin"), study_or_trial=trial)
    study.tell(trial, 1.0)  # the best model is recorded after its trial finished
    meta = {"artifact_id": "mine", "filename": "m.pt", "mimetype": "application/zip", "encoding": None}
    record_trial_artifact(study_storage(study), trial_id(trial), "mine", meta)
    record_trial_artifact(study_storage(study), trial_id(trial), "mine", meta)  # a retried write: still one
    listed = {m.artifact_id: m for m in get_all_artifact_meta(study.trials[0], storage=study_storage(study))}
    assert set(listed) == {ref, "mine"} and listed["mine"].filename == "m.pt"
