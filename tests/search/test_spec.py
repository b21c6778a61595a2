"""Study-file validation: every error names its key path and what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from search import SpecError, load_spec, parse_spec
from search._template import TEMPLATE

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
    ],
)
def test_bad_specs_name_the_key(changes: dict[str, object], expected: str) -> None:
    assert expected in errors_of(**changes)


def test_grid_budget_is_grid_size() -> None:
    spec = parse_spec({**BASE, "strategy": "grid", "n_trials": None,
                       "space": {"lr": {"values": [0.01, 0.1]}, "batch_size": {"choices": [16, 32, 64]}}})
    assert spec.grid_size == 6 and spec.budget == 6
    assert spec.space["lr"].type == "float"
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


def test_overrides_replace_file_keys() -> None:
    spec = parse_spec(BASE, n_trials=9, name="other", strategy="tpe")
    assert (spec.n_trials, spec.name, spec.strategy) == (9, "other", "tpe")
