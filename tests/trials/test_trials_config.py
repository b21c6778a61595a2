"""Config models, hyperparameter resolution and seeds."""

from __future__ import annotations

import math
import pickle

import pydantic
import pytest

from trials import (
    TUNABLE_PARAMS,
    DataSpec,
    HyperparameterError,
    ModelSpec,
    TrainingSpec,
    TrialSettings,
    check_param_names,
    resolve_hyperparams,
    trial_seed,
)


def test_typo_in_a_section_is_an_error():
    with pytest.raises(pydantic.ValidationError, match="lrr"):
        TrainingSpec(lrr=0.1)
    with pytest.raises(pydantic.ValidationError):
        TrialSettings.model_validate({"training": {"batchsize": 32}})


def test_specs_are_frozen():
    spec = TrainingSpec()
    with pytest.raises(pydantic.ValidationError):
        spec.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("source", ["npz", "csv", "parquet", "idx"])
def test_file_source_needs_path(source):
    with pytest.raises(pydantic.ValidationError, match=r"data\.path"):
        DataSpec(source=source, target="label")


def test_table_source_needs_target():
    with pytest.raises(pydantic.ValidationError, match=r"data\.target"):
        DataSpec(source="csv", path="x.csv")


def test_value_ranges_are_checked():
    with pytest.raises(pydantic.ValidationError):
        DataSpec(test_fraction=1.0)
    with pytest.raises(pydantic.ValidationError):
        ModelSpec(dropout=1.0)
    with pytest.raises(pydantic.ValidationError, match=r"package\.module:function"):
        ModelSpec(factory="not a path")
    with pytest.raises(pydantic.ValidationError):
        TrainingSpec(lr=0)


def test_resolve_overrides_settings():
    s = TrialSettings(model=ModelSpec(hidden=(64, 64, 64)), training=TrainingSpec(lr=0.1))
    hp = resolve_hyperparams(s, {"lr": 0.5, "optimizer": "adam", "dropout": 0.0, "batch_size": 16})
    assert (hp.lr, hp.optimizer, hp.dropout, hp.batch_size) == (0.5, "adam", 0.0, 16)
    assert hp.hidden == (64, 64, 64) and hp.momentum == 0.9
    assert resolve_hyperparams(s, {"hidden_size": 8}).hidden == (8, 8, 8)
    assert resolve_hyperparams(s, {"n_layers": 1}).hidden == (64,)
    assert resolve_hyperparams(s, {"hidden_size": 8, "n_layers": 2}).hidden == (8, 8)


def test_unknown_param_names_the_key_and_the_allowed_names():
    with pytest.raises(ValueError, match="'learning_rate'") as info:
        resolve_hyperparams(TrialSettings(), {"learning_rate": 0.1})
    assert all(name in str(info.value) for name in TUNABLE_PARAMS)
    with pytest.raises(ValueError, match="'lr_x'"):
        check_param_names(["lr", "lr_x"], TrialSettings())


def test_factory_allows_extra_names():
    s = TrialSettings(model=ModelSpec(factory="pkg.mod:make"))
    check_param_names(["width", "lr"], s)
    hp = resolve_hyperparams(s, {"width": 7, "lr": 0.3})
    assert hp.params == {"width": 7, "lr": 0.3} and hp.lr == 0.3


@pytest.mark.parametrize(
    "params", [{"lr": -1.0}, {"batch_size": 0}, {"batch_size": 2.5}, {"optimizer": "rmsprop"}, {"dropout": 1.0}]
)
def test_bad_values_raise(params):
    with pytest.raises(ValueError):
        resolve_hyperparams(TrialSettings(), params)


_NO_HIDDEN = TrialSettings(model=ModelSpec(hidden=()))


@pytest.mark.parametrize(
    ("settings", "params", "name", "message"),
    [
        (TrialSettings(), {"batch_size": 2.5}, "batch_size", "hyperparameter 'batch_size' must be an integer, got 2.5"),
        (TrialSettings(), {"batch_size": True}, "batch_size",
         "hyperparameter 'batch_size' must be an integer, got True"),
        (TrialSettings(), {"hidden_size": float("inf")}, "hidden_size",
         "hyperparameter 'hidden_size' must be an integer, got inf"),
        (TrialSettings(), {"batch_size": 0}, "batch_size", "hyperparameter 'batch_size' must be >= 1, got 0"),
        (TrialSettings(), {"n_layers": -1}, "n_layers", "hyperparameter 'n_layers' must be >= 0, got -1"),
        (TrialSettings(), {"lr": "0.1"}, "lr", "hyperparameter 'lr' must be a number, got '0.1'"),
        (TrialSettings(), {"lr": -1.0}, "lr", "hyperparameter 'lr' must be in (0.0, inf), got -1.0"),
        (TrialSettings(), {"lr": math.nan}, "lr", "hyperparameter 'lr' must be in (0.0, inf), got nan"),
        (TrialSettings(), {"momentum": 1}, "momentum", "hyperparameter 'momentum' must be in [0.0, 1.0), got 1"),
        (TrialSettings(), {"weight_decay": -0.1}, "weight_decay",
         "hyperparameter 'weight_decay' must be in [0.0, inf), got -0.1"),
        (TrialSettings(), {"dropout": 1.0}, "dropout", "hyperparameter 'dropout' must be in [0.0, 1.0), got 1.0"),
        (TrialSettings(), {"optimizer": "rmsprop"}, "optimizer",
         "hyperparameter 'optimizer' must be one of ['sgd', 'adam'], got 'rmsprop'"),
        (TrialSettings(), {"activation": 3}, "activation",
         "hyperparameter 'activation' must be one of ['relu', 'leaky_relu'], got 3"),
        (_NO_HIDDEN, {"n_layers": 2, "lr": 0.1}, "n_layers",
         "n_layers is tuned without hidden_size while model.hidden is empty"),
        # a factory takes any names, but the built-in ones must still be valid
        (TrialSettings(model=ModelSpec(factory="pkg.mod:make")), {"width": 3, "lr": 0}, "lr",
         "hyperparameter 'lr' must be in (0.0, inf), got 0"),
    ],
)
def test_a_bad_value_names_its_parameter(settings, params, name, message):
    with pytest.raises(HyperparameterError) as info:
        resolve_hyperparams(settings, params)
    err = info.value
    assert str(err) == message  # the messages are unchanged: users and tests read them
    assert err.name == name
    assert err.value is params[name]  # as given, not as converted
    assert isinstance(err, ValueError)  # callers catching ValueError still do
    again = pickle.loads(pickle.dumps(err))  # Ray returns a worker's exception by pickle
    assert (type(again), str(again), again.name) == (HyperparameterError, message, name)
    assert again.value == err.value or math.isnan(again.value)


def test_an_unknown_name_names_itself():
    with pytest.raises(HyperparameterError, match=r"^unknown hyperparameter 'learning_rate'; ") as info:
        resolve_hyperparams(TrialSettings(), {"lr": 0.1, "learning_rate": 0.1})
    assert (info.value.name, info.value.value) == ("learning_rate", None)
    with pytest.raises(HyperparameterError) as info:
        check_param_names(["lr", "lr_x"], TrialSettings())
    assert info.value.name == "lr_x"


def test_trial_seed():
    assert trial_seed(7, 3) == trial_seed(7, 3)
    seeds = {trial_seed(7, i) for i in range(100)} | {trial_seed(8, 0)}
    assert len(seeds) == 101
    assert all(0 <= s < 2**31 for s in seeds)
