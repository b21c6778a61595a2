"""Study-file validation: every error names its key path and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search import SpecError, load_spec, parse_spec
from search.cli._template import TEMPLATE

BASE = {
    "name": "s",
    "strategy": "random",
    "n_trials": 4,
    "space": {"lr": {"type": "float", "low": 1e-3, "high": 0.1, "log": True}},
}


def errors_of(**changes: object) -> str:
    raw = {**BASE, **changes}
    with pytest.raises(SpecError) as info:
        parse_spec(raw)
    return str(info.value)


def test_valid_spec_and_defaults() -> None:
    spec = parse_spec(BASE)
    assert spec.study_direction == "maximize"
    assert spec.budget == 4
    assert spec.cv.folds == 5


def test_demo_and_template_parse() -> None:
    spec = load_spec(Path(__file__).parents[2] / "examples" / "digits.yaml")
    assert spec.strategy == "tpe"
    spec = load_spec(Path(__file__).parents[2] / "examples" / "diabetes.yaml")
    assert (spec.task, spec.metric, spec.study_direction, spec.settings.loss) == ("regression", "val_r2", "maximize",
                                                                                  "mse")
    assert parse_spec(yaml.safe_load(TEMPLATE.replace("NAME", "t"))).name == "t"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"lerning_rate": 0.1}, "lerning_rate: unknown key"),
        ({"training": {"max_epoch": 3}}, "training.max_epoch: unknown key"),
        ({"n_trials": "many"}, "n_trials:"),
        ({"space": {}}, "space: is empty"),
        ({"space": {"lr": {"type": "float", "low": 0, "high": 1, "log": True}}},
         "space.lr.low: must be > 0 for log scale"),
        ({"space": {"lr": {"type": "float", "low": 1, "high": 0.1}}}, "space.lr: low (1.0) must be <= high (0.1)"),
        ({"space": {"lr": {"type": "gaussian", "low": 1, "high": 2}}},
         "space.lr.type: must be float, int or categorical (got 'gaussian')"),
        ({"strategy": "bayes"}, "strategy: Input should be 'grid', 'random' or 'tpe' (got 'bayes')"),
        ({"strategy": "grid"}, "space.lr.values: strategy grid needs a list of values"),
        ({"space": {"learning_rate": {"type": "float", "low": 0.1, "high": 1}}},
         "space.learning_rate: unknown hyperparameter 'learning_rate'"),
        ({"direction": "minimize"}, "direction: minimize does not fit metric val_accuracy"),
        ({"n_trials": None}, "n_trials: required for strategy random"),
        ({"resources": {"gpus_per_trial": 1.5}}, "resources.gpus_per_trial: must be a fraction"),
        ({"space": {"batch_size": {"choices": []}}}, "space.batch_size.choices: must list at least one choice"),
        ({"name": "  "}, "name: must be 1-200 printable characters"),
        ({"n_trials": -3}, "n_trials: Input should be greater than or equal to 1 (got -3)"),
        ({"space": {"lr": {"type": "float", "low": "abc", "high": 1}}}, "space.lr.low: Input should be a valid "
         "number, unable to parse string as a number (got 'abc')"),
        # values the model cannot take are refused at load time, not trial by trial at run time
        ({"space": {"lr": {"type": "float", "low": -1, "high": 0.1}}},
         "space.lr: hyperparameter 'lr' must be in (0.0, inf), got -1.0; change the range or choices"),
        ({"space": {"dropout": {"type": "float", "low": 0, "high": 2}}},
         "space.dropout: hyperparameter 'dropout' must be in [0.0, 1.0), got 2.0"),
        ({"space": {"batch_size": {"choices": [0, 32]}}}, "space.batch_size: hyperparameter 'batch_size' must be >= 1"),
        ({"space": {"batch_size": {"type": "float", "low": 16, "high": 64}}},
         "space.batch_size: must be type int or categorical"),
        ({"space": {"n_layers": {"type": "float", "low": 1, "high": 3}}}, "space.n_layers: must be type int"),
        ({"space": {"optimizer": {"choices": ["sgd", "adamw"]}}},
         "space.optimizer: hyperparameter 'optimizer' must be one of ['sgd', 'adam'], got 'adamw'"),
        ({"space": {"activation": {"choices": ["relu", 3]}}}, "space.activation: hyperparameter 'activation'"),
        ({"space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "step": -0.01}}},
         "space.lr.step: must be > 0 (got -0.01)"),
        ({"space": {"lr": {"type": "float", "low": 0.01, "high": 0.1, "step": 1}}},
         "space.lr.step: 1.0 is larger than high - low (0.09), so only low would ever be tried"),
        ({"strategy": "grid", "n_trials": None, "space": {"lr": {"values": [0.1, 0.1]}}},
         "space.lr.values: has duplicates [0.1, 0.1]"),
        ({"pruner": {"type": "median", "min_resource": 3}},
         "pruner.min_resource: not used by pruner type median (only by successive_halving or hyperband)"),
        ({"checkpoint": {"keep_best": True}},
         "checkpoint.keep_best: true keeps the best trial's checkpoint, but no checkpoint is saved: set "
         "checkpoint.every_epochs (or every_s) too"),
    ],
)
def test_bad_specs_name_the_key(changes: dict[str, object], expected: str) -> None:
    assert expected in errors_of(**changes)


def test_grid_budget_is_grid_size() -> None:
    spec = parse_spec({**BASE, "strategy": "grid", "n_trials": None,
                       "space": {"lr": {"values": [0.01, 0.1]}, "batch_size": {"choices": [16, 32, 64]}}})
    assert spec.grid_size == 6 and spec.budget == 6
    assert spec.space["lr"].type == "float"
    too_few = {**BASE, "strategy": "grid", "n_trials": 1, "space": {"lr": {"values": [0.01, 0.1]}}}
    with pytest.raises(SpecError, match="n_trials: 1 is below the grid's 2 points, and grid runs every point exactly"):
        parse_spec(too_few)
    assert parse_spec(too_few, stored=True).budget == 1  # a study stored with a subset still resumes as it was
    too_many = {**BASE, "strategy": "grid", "n_trials": 7, "space": {"lr": {"values": [0.01, 0.1]}}}
    with pytest.raises(SpecError, match="n_trials: 7 exceeds the grid's 2 points"):
        parse_spec(too_many)


def test_unicode_and_quotes_in_names_are_fine() -> None:
    assert parse_spec({**BASE, "name": "étude 'α' \"β\" 1"}).name == "étude 'α' \"β\" 1"


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="no such file; create one with `hpsearch init"):
        load_spec(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)


def test_every_error_of_the_space_is_named_at_once() -> None:
    """A bad parameter does not hide the errors of the others."""
    text = errors_of(space={"lr": {"type": "float", "low": -1, "high": 0.1},
                            "dropout": {"type": "float", "low": 0, "high": 2}})
    assert "space.lr: hyperparameter 'lr'" in text and "space.dropout: hyperparameter 'dropout'" in text


def test_valid_tuned_model_shape_and_user_names_with_a_factory() -> None:
    spec = parse_spec({**BASE, "space": {"n_layers": {"type": "int", "low": 1, "high": 3},
                                         "hidden_size": {"type": "int", "low": 16, "high": 64}}})
    assert set(spec.space) == {"n_layers", "hidden_size"}
    spec = parse_spec({**BASE, "model": {"factory": "mymodels:build"},
                       "space": {"width": {"type": "float", "low": -3, "high": 3}, "lr": BASE["space"]["lr"]}})
    assert set(spec.space) == {"width", "lr"}  # the factory's own names are its business


def test_not_utf8_and_duplicate_keys(tmp_path: Path) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: s\n# caf\xe9\nstrategy: random\n")
    with pytest.raises(SpecError, match=r"not UTF-8 text \(byte 0xe9 at offset 13\); save the file as UTF-8"):
        load_spec(latin)
    twice = tmp_path / "twice.yaml"
    twice.write_text("name: x\nstrategy: random\nname: y\n")
    with pytest.raises(SpecError, match="key 'name' is given twice; keep one of them"):
        load_spec(twice)
    nested = tmp_path / "nested.yaml"
    nested.write_text(yaml.safe_dump(BASE) + "training:\n  max_epochs: 3\n  max_epochs: 4\n")
    with pytest.raises(SpecError, match="key 'max_epochs' is given twice"):
        load_spec(nested)


def test_a_stored_spec_with_every_default_parses_again() -> None:
    """Stored specs list every option (defaults included); resuming must accept them."""
    for pruner in ("none", "median", "successive_halving", "hyperband"):
        spec = parse_spec({**BASE, "pruner": {"type": pruner}})
        assert parse_spec(spec.to_dict()) == spec


@pytest.mark.parametrize("space", [
    {"dropout": {"type": "float", "low": 0.1, "high": 0.3, "step": 0.2}},  # 0.3 - 0.1 < 0.2 in binary
    {"dropout": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.3}},  # proposes 0 .. 0.9, never 1.0
    {"batch_size": {"type": "int", "low": 16, "high": 64, "step": 16}},
])
def test_valid_steps_are_accepted(space: dict) -> None:
    assert set(parse_spec({**BASE, "space": space}).space) == set(space)


def test_grid_checks_the_values_it_runs_not_the_range_beside_them() -> None:
    """low/high may stay in the file for random and TPE (``--strategy``); grid runs only the values."""
    space = {"dropout": {"type": "float", "low": 0.0, "high": 1.0, "values": [0.1, 0.3]}}
    assert parse_spec({**BASE, "strategy": "grid", "n_trials": None, "space": space}).grid_size == 2
    assert "got 1.0" in errors_of(space=space)  # random would propose up to 1.0


def test_infinite_or_unhashable_values_are_errors_not_crashes(tmp_path: Path) -> None:
    assert "space.batch_size: hyperparameter 'batch_size' must be an integer, got inf" in errors_of(
        space={"batch_size": {"choices": [16, float("inf")]}})
    odd = tmp_path / "odd.yaml"
    odd.write_text("name: s\n? [a, b]\n: 1\n")
    with pytest.raises(SpecError, match=r"(?s)not valid YAML: .*found unhashable key"):
        load_spec(odd)


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    merged = tmp_path / "merged.yaml"
    merged.write_text(
        "name: s\nstrategy: random\nn_trials: 2\n"
        "space: {lr: &range {type: float, low: 0.001, high: 0.1}, momentum: {<<: *range, high: 0.5}}\n")
    spec = load_spec(merged)
    assert (spec.space["momentum"].low, spec.space["momentum"].high) == (0.001, 0.5)


def test_a_stored_spec_skips_the_checks_added_after_it_was_stored() -> None:
    """A study created before a check existed must stay resumable: its stored spec is re-parsed with
    ``stored=True``; the same keys in a new file are refused."""
    old = {**BASE, "pruner": {"type": "median", "min_resource": 2},
           "space": {"dropout": {"type": "float", "low": 0.0, "high": 1.0}}}
    assert "pruner.min_resource: not used" in errors_of(**{k: v for k, v in old.items() if k in ("pruner", "space")})
    spec = parse_spec(old, stored=True)
    assert spec.pruner.min_resource == 2 and spec.space["dropout"].high == 1.0
    grid = {**BASE, "strategy": "grid", "n_trials": None, "space": {"lr": {"values": [0.01, 0.01, 0.1]}}}
    assert parse_spec(grid, stored=True).grid_size == 3
    with pytest.raises(SpecError, match="has duplicates"):
        parse_spec(grid)


def test_overrides_replace_file_keys() -> None:
    spec = parse_spec(BASE, n_trials=9, name="other", strategy="tpe")
    assert (spec.n_trials, spec.name, spec.strategy) == (9, "other", "tpe")


def test_an_error_of_one_parameter_is_not_reported_under_the_others() -> None:
    """The parameter at fault comes from the error (``HyperparameterError.name``), not from the one varied."""
    text = errors_of(model={"hidden": []}, space={"n_layers": {"type": "int", "low": 1, "high": 3},
                                                   "lr": BASE["space"]["lr"]})
    assert "space.n_layers: n_layers is tuned without hidden_size while model.hidden is empty" in text
    assert "space.lr:" not in text


def test_a_data_file_without_a_file_source_is_refused() -> None:
    """data.source defaults to digits: before, a study with only data.path trained on the digits set."""
    text = errors_of(data={"path": "x.csv", "target": "y"})
    assert "data.path: 'x.csv' is set, but data.source is 'digits', which reads no file" in text
    assert "data.target: 'y' is set" in text
    stored = parse_spec({**BASE, "data": {"path": "x.csv"}}, stored=True)  # a stored spec still resumes
    assert stored.data.source == "digits"
