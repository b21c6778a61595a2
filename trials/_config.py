"""Configuration models for a trial and the resolution of tuned hyperparameters.

The pydantic models here are the sections ``data``, ``model``, ``training`` and ``cv`` of a
study file (``search/spec.py`` composes them); their field names are a documented contract.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "TUNABLE_PARAMS",
    "CVSpec",
    "DataSpec",
    "Hyperparams",
    "ModelSpec",
    "TrainingSpec",
    "TrialSettings",
    "check_param_names",
    "resolve_hyperparams",
    "stack_key",
]

_FILE_SOURCES = ("npz", "csv", "parquet", "idx")
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Spec):
    """Where the data comes from and how the test split is taken.

    Attributes
    ----------
    source
        ``digits`` (scikit-learn's bundled 8x8 digits, no download), ``synthetic``
        (``make_classification``), ``npz`` (arrays ``X`` and ``y``), ``csv`` / ``parquet``
        (a ``target`` label column, every other column a numeric feature) or ``idx`` (a directory
        of MNIST-format IDX files, gzipped or not).
    path
        File (or, for ``idx``, directory) to read; required for file sources.
    target
        Label column for ``csv`` / ``parquet``; required there.
    test_fraction
        Fraction of rows set aside as the stratified test split before any fold is built
        (ignored for ``idx``, which has its own test files).
    n_samples, n_features, n_classes, n_informative
        Shape of the ``synthetic`` data set (ignored by the other sources).
    """

    source: Literal["digits", "synthetic", "npz", "csv", "parquet", "idx"] = "digits"
    path: str | None = None
    target: str | None = None
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    n_samples: int = Field(2000, ge=10)
    n_features: int = Field(20, ge=1)
    n_classes: int = Field(2, ge=2)
    n_informative: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _check(self) -> DataSpec:
        if self.source in _FILE_SOURCES and not self.path:
            raise ValueError(f"data.path is required when data.source is {self.source!r}")
        if self.source in ("csv", "parquet") and not self.target:
            raise ValueError(f"data.target (the label column) is required when data.source is {self.source!r}")
        if self.n_informative is not None and self.n_informative > self.n_features:
            raise ValueError(
                f"data.n_informative ({self.n_informative}) must be <= data.n_features ({self.n_features})"
            )
        return self


class ModelSpec(_Spec):
    """The network.

    Attributes
    ----------
    hidden
        Widths of the hidden layers of the built-in MLP (empty: a linear classifier).
    activation
        ``relu`` or ``leaky_relu`` (slope 0.01), applied after each hidden layer, then dropout.
    dropout
        Dropout probability after each hidden layer, ``0 <= dropout < 1``.
    factory
        Optional import path ``package.module:function`` of a user model factory, called as
        ``factory(params, n_features, n_classes)`` and returning an ``nn.Module`` that maps
        ``[batch, n_features]`` to ``[batch, n_classes]`` logits. When set, ``hidden``,
        ``activation`` and ``dropout`` are only passed on through ``params``.
    """

    hidden: tuple[int, ...] = (200, 200)
    activation: Literal["relu", "leaky_relu"] = "relu"
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    factory: str | None = None

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"model.hidden must hold positive layer widths, got {list(self.hidden)}")
        if self.factory is not None and not _FACTORY_RE.match(self.factory):
            raise ValueError(
                f"model.factory must be an import path of the form 'package.module:function', got {self.factory!r}"
            )
        return self


class TrainingSpec(_Spec):
    """Optimisation, early stopping and learning-rate schedule.

    Attributes
    ----------
    optimizer
        ``sgd`` (with ``momentum``) or ``adam`` (betas 0.9, 0.999; eps 1e-8).
    lr, momentum, weight_decay
        Learning rate, SGD momentum, L2 weight decay (added to the gradient, as torch.optim does).
    batch_size
        Rows per optimisation step (per member).
    max_epochs, patience, min_delta, monitor
        Early stopping per member: stop after ``patience`` epochs without an improvement of more
        than ``min_delta`` in ``monitor`` (``val_loss`` is minimised, ``val_accuracy`` maximised);
        the best epoch's weights are restored.
    lr_schedule, step_size, gamma, plateau_factor, plateau_patience
        ``none``; ``step`` (multiply by ``gamma`` every ``step_size`` epochs, like ``StepLR``);
        ``plateau`` (multiply by ``plateau_factor`` after ``plateau_patience`` epochs without
        improvement of ``monitor``, per member, like ``ReduceLROnPlateau``).
    device
        ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(0.01, gt=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int = Field(64, ge=1)
    max_epochs: int = Field(50, ge=1)
    patience: int = Field(5, ge=0)
    min_delta: float = Field(0.0, ge=0.0)
    monitor: Literal["val_loss", "val_accuracy"] = "val_loss"
    lr_schedule: Literal["none", "step", "plateau"] = "none"
    step_size: int = Field(10, ge=1)
    gamma: float = Field(0.5, gt=0.0, le=1.0)
    plateau_factor: float = Field(0.5, gt=0.0, lt=1.0)
    plateau_patience: int = Field(2, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class CVSpec(_Spec):
    """Cross-validation.

    Attributes
    ----------
    folds
        Number of stratified folds; ``1`` means a single stratified holdout split of
        ``val_fraction``.
    val_fraction
        Holdout fraction for ``folds == 1`` and for the refit's inner early-stopping split.
    shuffle
        Shuffle rows before assigning k-folds (``StratifiedKFold(shuffle=...)``). The test split and
        the ``folds == 1`` holdout are always shuffled (stratification needs it).
    """

    folds: int = Field(5, ge=1)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    shuffle: bool = True


class TrialSettings(_Spec):
    """Everything except the data that a trial needs: ``model``, ``training`` and ``cv``."""

    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    cv: CVSpec = CVSpec()


TUNABLE_PARAMS: frozenset[str] = frozenset(
    {
        "lr",
        "dropout",
        "batch_size",
        "momentum",
        "weight_decay",
        "optimizer",
        "activation",
        "hidden_size",
        "n_layers",
    }
)
"""Names a search space may tune for the built-in MLP (``hidden_size`` and ``n_layers`` rebuild
``model.hidden`` as ``(hidden_size,) * n_layers``; either alone keeps the other from
``model.hidden``)."""


@dataclass(frozen=True)
class Hyperparams:
    """The resolved values one trial trains with (settings overridden by tuned params)."""

    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    dropout: float
    activation: str
    hidden: tuple[int, ...]
    max_epochs: int
    patience: int
    min_delta: float
    monitor: str
    lr_schedule: str
    step_size: int
    gamma: float
    plateau_factor: float
    plateau_patience: int
    factory: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    """All tuned params as given (passed to a user model factory)."""


PER_MEMBER_FIELDS: frozenset[str] = frozenset({"lr", "momentum", "weight_decay", "dropout", "params"})
"""Hyperparameters that may differ between the members of one stack (one value per member)."""


def stack_key(hp: Hyperparams) -> tuple[Any, ...]:
    """What configurations must share to train in one stack: everything but the per-member values.

    Configurations with equal keys (same optimizer, batch size, network shape, schedule, early
    stopping) can train as members of one network, each with its own ``lr``, ``momentum``,
    ``weight_decay`` and ``dropout``. Configurations of a user model factory (``factory`` set)
    never share a stack: the factory builds its modules from all tuned params.
    """
    return tuple((f.name, getattr(hp, f.name)) for f in dataclasses.fields(hp) if f.name not in PER_MEMBER_FIELDS)


def check_param_names(names: Iterable[str], settings: TrialSettings) -> None:
    """Raise ``ValueError`` if a name is not tunable for ``settings``.

    Parameters
    ----------
    names
        Hyperparameter names of a search space or of one trial.
    settings
        With ``model.factory`` set, any name is allowed (extra names go to the factory).

    Raises
    ------
    ValueError
        Naming the first unknown key and listing the allowed names.
    """
    if settings.model.factory is not None:
        return
    for name in names:
        if name not in TUNABLE_PARAMS:
            raise ValueError(
                f"unknown hyperparameter {name!r}; the built-in MLP can tune: "
                f"{', '.join(sorted(TUNABLE_PARAMS))} (set model.factory to pass other names "
                "to your own model)"
            )


def _as_int(name: str, value: Any, minimum: int) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or int(value) != value):
        raise ValueError(f"hyperparameter {name!r} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"hyperparameter {name!r} must be >= {minimum}, got {value!r}")
    return int(value)


def _as_float(name: str, value: Any, low: float, high: float | None, *, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"hyperparameter {name!r} must be a number, got {value!r}")
    v = float(value)
    bad_low = v <= low if low_open else v < low
    if bad_low or (high is not None and v >= high) or v != v:
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise ValueError(f"hyperparameter {name!r} must be in {rng}, got {value!r}")
    return v


def _as_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"hyperparameter {name!r} must be one of {list(choices)}, got {value!r}")
    return str(value)


def resolve_hyperparams(settings: TrialSettings, params: Mapping[str, Any]) -> Hyperparams:
    """Merge tuned ``params`` over ``settings`` into the values one trial uses.

    Parameters
    ----------
    settings
        Model, training and CV settings of the study.
    params
        Tuned values, names from :data:`TUNABLE_PARAMS` (any names when ``model.factory`` is set).

    Returns
    -------
    Hyperparams

    Raises
    ------
    ValueError
        For an unknown name (listing the allowed names) or an out-of-range value.
    """
    check_param_names(params.keys(), settings)
    t, m = settings.training, settings.model
    p = dict(params)
    hidden = m.hidden
    if "hidden_size" in p or "n_layers" in p:
        size = _as_int("hidden_size", p["hidden_size"], 1) if "hidden_size" in p else None
        layers = _as_int("n_layers", p["n_layers"], 0) if "n_layers" in p else None
        if size is None:
            if not hidden:
                raise ValueError("n_layers is tuned without hidden_size while model.hidden is empty")
            size = hidden[0]
        if layers is None:
            layers = len(hidden)
        hidden = (size,) * layers
    return Hyperparams(
        optimizer=_as_choice("optimizer", p.get("optimizer", t.optimizer), ("sgd", "adam")),
        lr=_as_float("lr", p.get("lr", t.lr), 0.0, None, low_open=True),
        momentum=_as_float("momentum", p.get("momentum", t.momentum), 0.0, 1.0, low_open=False),
        weight_decay=_as_float("weight_decay", p.get("weight_decay", t.weight_decay), 0.0, None, low_open=False),
        batch_size=_as_int("batch_size", p.get("batch_size", t.batch_size), 1),
        dropout=_as_float("dropout", p.get("dropout", m.dropout), 0.0, 1.0, low_open=False),
        activation=_as_choice("activation", p.get("activation", m.activation), ("relu", "leaky_relu")),
        hidden=hidden,
        max_epochs=t.max_epochs,
        patience=t.patience,
        min_delta=t.min_delta,
        monitor=t.monitor,
        lr_schedule=t.lr_schedule,
        step_size=t.step_size,
        gamma=t.gamma,
        plateau_factor=t.plateau_factor,
        plateau_patience=t.plateau_patience,
        factory=m.factory,
        params=p,
    )
