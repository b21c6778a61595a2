"""Configuration models for a trial and the resolution of tuned hyperparameters.

The pydantic models here are the sections ``data``, ``model``, ``training`` and ``cv`` of a
study file (``search/spec.py`` composes them); their field names are a documented contract.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_serializer, model_validator

from ._metrics import METRICS, check_task_settings, default_loss

__all__ = [
    "TUNABLE_PARAMS",
    "CVSpec",
    "DataSpec",
    "HyperparameterError",
    "Hyperparams",
    "ModelSpec",
    "TrainingSpec",
    "TrialSettings",
    "check_param_names",
    "factory_name",
    "group_source_error",
    "resolve_hyperparams",
    "resolve_scaling",
    "stack_key",
]

_FILE_SOURCES = ("npz", "csv", "parquet", "idx")
_GROUP_SOURCES = ("npz", "csv", "parquet", "python")
SCALINGS = ("auto", "per_feature", "global", "per_channel", "none")
"""Values of ``data.scaling`` (``auto`` resolves by the samples' rank: see :func:`resolve_scaling`)."""
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")
# How a spec stores a Python callable given as a factory: by name only, so it cannot be imported back.
_CALLABLE_PREFIX = "python callable "


def factory_name(factory: str | Callable[..., Any]) -> str:
    """An import path as given; a callable as ``module:qualname`` (e.g. ``__main__:build``)."""
    if isinstance(factory, str):
        return factory
    module = getattr(factory, "__module__", None) or "?"
    return f"{module}:{getattr(factory, '__qualname__', None) or type(factory).__name__}"


def check_callable_field(key: str, value: str | Callable[..., Any] | None) -> None:
    """Raise ``ValueError`` unless ``value`` (of study-file key ``key``) is None, a callable, or an
    import path ``package.module:function``; a stored callable's name (``"python callable ..."``)
    says how to continue its study."""
    error = factory_path_error(value, key)
    if error:
        raise ValueError(error)


def callable_by_name(value: str | Callable[..., Any] | None) -> str | None:
    """How a spec stores an import path or callable: the path as given; a callable by name only."""
    return value if value is None or isinstance(value, str) else _CALLABLE_PREFIX + factory_name(value)
def resolve_scaling(scaling: str, input_shape: tuple[int, ...]) -> str:
    """``data.scaling`` for samples of ``input_shape``: ``auto`` is ``per_feature`` for flat
    samples (tabular data) and ``global`` for N-D samples (images); other values as given.

    Raises
    ------
    ValueError
        ``per_channel`` for flat samples, which have no channel axis.
    """
    if scaling == "auto":
        return "per_feature" if len(input_shape) == 1 else "global"
    if scaling == "per_channel" and len(input_shape) < 2:
        raise ValueError(f"data.scaling: per_channel needs N-D samples [channels, ...]; these samples have shape "
                         f"{list(input_shape)}: set data.shape (e.g. [1, 8, 8]) or use per_feature / global / none")
    return scaling


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSpec(_Spec):
    """Where the data comes from and how the test split is taken.

    Attributes
    ----------
    source
        ``digits`` (scikit-learn's bundled 8x8 digits, no download), ``diabetes``
        (scikit-learn's bundled diabetes regression set, 442 rows, 10 features, no download),
        ``synthetic`` (``make_classification``, or ``make_regression`` for ``task: regression``),
        ``npz`` (arrays ``X`` and ``y``), ``csv`` / ``parquet``
        (a ``target`` label column, every other column a numeric feature) or ``idx`` (a directory
        of MNIST-format IDX files, gzipped or not), or ``python`` (the arrays or the
        ``torch.utils.data.Dataset`` that ``factory`` returns).
    path
        File (or, for ``idx``, directory) to read; required for file sources.
    target
        Label column for ``csv`` / ``parquet``; required there.
    test_fraction
        Fraction of rows set aside as the stratified test split before any fold is built
        (ignored for ``idx``, which has its own test files).
    n_samples, n_features, n_classes, n_informative
        Shape of the ``synthetic`` data set (ignored by the other sources).
    factory
        For ``source: python``: a function called once, with no arguments, on the driver, as an
        import path ``package.module:function`` or (from Python) the callable itself (stored with
        the study by name only, like ``model.factory``). It returns ``(X, y)``, ``(X, y, groups)``,
        a mapping with keys ``X``, ``y`` and any arrays ``cv.groups`` may name (numpy arrays,
        tensors or lists; ``X`` of any shape), or a map-style or iterable
        ``torch.utils.data.Dataset`` of ``(x, y)`` or ``(x, y, group)`` samples, which is read once,
        into memory up to ``max_preload_mb``. The arrays are then checked and split as an ``npz``
        archive's are.
    max_preload_mb
        The most memory, in MiB, that the features of a ``Dataset`` may take when preloaded
        (default 4096). A larger map-style ``Dataset`` streams (:mod:`trials._stream`): the driver
        keeps its labels and groups, each worker calls ``factory`` again and reads the samples in
        batches; a larger iterable one is refused.
    shape
        The shape of one sample, e.g. ``[1, 28, 28]`` (channels first): each row (a csv/parquet
        row, a flat array's row, or an N-D sample of the same size) is reshaped to it. ``None``:
        samples keep the shape the source gives them (npz and idx keep N-D samples; tables,
        ``digits``, ``diabetes`` and ``synthetic`` give flat rows).
    scaling
        How the features are scaled, with statistics of each fold's training rows only:
        ``per_feature`` (standardize every feature on its own, as ``StandardScaler``), ``global``
        (one mean and std over every value of a sample), ``per_channel`` (one mean and std per
        channel, the first axis of N-D samples) or ``none`` (as loaded; idx images are /255).
        ``auto`` (the default): ``per_feature`` for flat samples, ``global`` for N-D samples.
    """

    source: Literal["digits", "diabetes", "synthetic", "npz", "csv", "parquet", "idx", "python"] = "digits"
    path: str | None = None
    target: str | None = None
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    n_samples: int = Field(2000, ge=10)
    n_features: int = Field(20, ge=1)
    n_classes: int = Field(2, ge=2)
    n_informative: int | None = Field(None, ge=1)
    factory: str | Callable[..., Any] | None = None
    max_preload_mb: float = Field(4096.0, gt=0.0)
    shape: tuple[int, ...] | None = None
    scaling: Literal[SCALINGS] = "auto"  # type: ignore[valid-type]

    @field_serializer("factory", when_used="json")
    def _factory_by_name(self, v: str | Callable[..., Any] | None) -> str | None:
        return callable_by_name(v)

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> DataSpec:
        if self.source == "python" and self.factory is None:
            raise ValueError("data.factory (a function 'package.module:function' returning (X, y) or a "
                             "torch.utils.data.Dataset) is required when data.source is 'python'")
        if self.factory is not None and self.source != "python":
            raise ValueError(f"data.factory is set, but data.source is {self.source!r}; set data.source: python "
                             "to load the data from the factory (or remove data.factory)")
        # a stored study made with a callable keeps its name: it is shown, and its saved model loads;
        # only loading its data needs the callable (refused then, with the same reason: see load_python)
        stored = (info.context or {}).get("stored", False)
        factory_error = factory_path_error(self.factory, "data.factory")
        if factory_error and not (stored and stored_callable(self.factory)):
            raise ValueError(factory_error)
        if self.shape is not None and (not self.shape or any(s < 1 for s in self.shape)):
            raise ValueError(f"data.shape must list positive sizes of one sample, e.g. [1, 28, 28], "
                             f"got {list(self.shape)}")
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
        Optional user model factory, called as ``factory(params, input_shape, n_outputs)`` (the
        shape of one sample, a tuple, and the number of outputs) and returning an ``nn.Module``
        that maps ``[batch, *input_shape]`` to ``[batch, n_outputs]`` logits; a factory of the
        legacy form ``factory(params, n_features, n_classes)`` (no parameter named ``input_shape``,
        see :class:`trials._models.ModelFactory`) gets ``prod(input_shape)`` and flat batches
        ``[batch, n_features]``. An import path ``package.module:function``, or (from Python) the callable itself,
        which Ray ships to its workers by value (a function defined in a notebook works). A
        callable is stored with the study by name only (``"python callable __main__:build"``), so
        such a study resumes from Python, by running the same spec again, not from the CLI. When
        set, ``hidden``, ``activation`` and ``dropout`` are only passed on through ``params``.
    """

    hidden: tuple[int, ...] = (200, 200)
    activation: Literal["relu", "leaky_relu"] = "relu"
    dropout: float = Field(0.2, ge=0.0, lt=1.0)
    factory: str | Callable[..., Any] | None = None

    @field_serializer("factory", when_used="json")
    def _factory_by_name(self, v: str | Callable[..., Any] | None) -> str | None:
        return callable_by_name(v)

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"model.hidden must hold positive layer widths, got {list(self.hidden)}")
        check_callable_field("model.factory", self.factory)
        return self


def stored_callable(factory: str | Callable[..., Any] | None) -> str | None:
    """The name ``module:qualname`` of a callable as a stored spec names it, else ``None``."""
    if isinstance(factory, str) and factory.startswith(_CALLABLE_PREFIX):
        return factory[len(_CALLABLE_PREFIX):]
    return None


def factory_path_error(factory: str | Callable[..., Any] | None, key: str) -> str | None:
    """What is wrong with a factory given as a string (``key`` is ``model.factory`` or ``data.factory``)."""
    name = stored_callable(factory)
    if name is not None:
        return (f"{key} was the Python callable {name}, which a stored study names but cannot import; "
                "continue it from Python by running the same spec, with that callable, again (run_study), "
                f"or give {key} an import path 'package.module:function' in a new study")
    if isinstance(factory, str) and not _FACTORY_RE.match(factory):
        return (f"{key} must be an import path of the form 'package.module:function' (or, from Python, "
                f"a callable), got {factory!r}")
    return None


def group_source_error(data: DataSpec, cv: CVSpec) -> str | None:
    """Why ``cv.groups`` cannot be used with ``data`` (a source without groups), or ``None``."""
    if cv.groups is None or data.source in _GROUP_SOURCES:
        return None
    return (f"cv.groups {cv.groups!r} is set, but data.source {data.source!r} has no groups; grouped folds need "
            "data.source csv or parquet (a column), npz (an array) or python (an array the factory returns), "
            "or remove cv.groups")


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
    loss
        The training loss: ``cross_entropy`` for classification (the only one, and the default);
        ``mse`` (the default), ``l1`` or ``huber`` (delta 1) for regression, computed on the target
        standardized with the member's training rows' mean and std. ``None``: the task's default.
    max_epochs, patience, min_delta, monitor
        Early stopping per member: stop after ``patience`` epochs without an improvement of more
        than ``min_delta`` in ``monitor``, any validation metric of the task (losses and errors
        are minimised, accuracy, F1, AUC and R² maximised); the best epoch's weights are restored.
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
    loss: Literal["cross_entropy", "mse", "l1", "huber"] | None = None
    monitor: Literal[METRICS] = "val_loss"  # type: ignore[valid-type]
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
    groups
        Optional name of the groups (a patient, a user, a site): a column of a ``csv`` / ``parquet``
        file (not used as a feature), an array of the ``npz`` archive, or for ``data.source:
        python`` a key of the factory's return (``groups`` for a ``(X, y, groups)`` tuple). Rows of
        one group never sit in two folds, nor on both sides of the test split or of the refit's
        inner split: ``StratifiedGroupKFold`` for classification, ``GroupKFold`` for regression
        (shuffled with the study seed when ``shuffle``); a holdout (the test split, ``folds == 1``)
        is one fold of ``round(1 / fraction)`` such folds for classification (stratified, so its
        size is close to the fraction) and a ``GroupShuffleSplit`` of the fraction of groups for
        regression.
    """

    folds: int = Field(5, ge=1)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    shuffle: bool = True
    groups: str | None = Field(None, min_length=1)


class TrialSettings(_Spec):
    """Everything except the data that a trial needs: ``task``, ``model``, ``training`` and ``cv``.

    ``task`` is ``classification`` (labels, cross-entropy, stratified folds) or ``regression`` (a
    numeric target, ``training.loss``, plain k-fold); ``training.monitor`` and ``training.loss``
    must be the task's.
    """

    task: Literal["classification", "regression"] = "classification"
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    cv: CVSpec = CVSpec()
    trainable: str | Callable[..., Any] | None = None
    """Your own training function (``package.module:function`` or a callable), called once per fold
    with a :class:`trials.TrainContext`; ``None``: hpsearch's own loop (see :mod:`trials._trainable`)."""
    metric: Literal[METRICS] | None = None  # type: ignore[valid-type]
    """The study's metric: a ``trainable`` must report it (besides ``training.monitor``) every epoch."""

    @field_serializer("trainable", when_used="json")
    def _trainable_by_name(self, v: str | Callable[..., Any] | None) -> str | None:
        return callable_by_name(v)

    @model_validator(mode="after")
    def _check(self) -> TrialSettings:
        errors = check_task_settings(self.task, metric=None, monitor=self.training.monitor, loss=self.training.loss)
        try:
            check_callable_field("trainable", self.trainable)
        except ValueError as e:
            errors.append(str(e))
        if errors:
            raise ValueError("\n".join(errors))
        return self

    @property
    def reported_metrics(self) -> tuple[str, ...]:
        """What a ``trainable`` must report every epoch: ``training.monitor`` and the study's metric."""
        return tuple(dict.fromkeys(m for m in (self.training.monitor, self.metric) if m is not None))

    @property
    def loss(self) -> str:
        """``training.loss``, or the task's default."""
        return self.training.loss or default_loss(self.task)


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
    factory: str | Callable[..., Any] | None = None
    task: str = "classification"
    loss: str = "cross_entropy"
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


class HyperparameterError(ValueError):
    """A tuned hyperparameter has a name or a value one trial cannot use.

    Raised by :func:`check_param_names` and :func:`resolve_hyperparams`; ``str(err)`` is the
    message for the user, the attributes say which parameter it is about (so that a caller can
    name its key path without reading the message).

    Attributes
    ----------
    name : str
        The hyperparameter at fault (a key of the tuned params or of the search space).
    value : Any
        The value it was given, as given; ``None`` for an unknown name reported by
        :func:`check_param_names`, which sees the names only.
    """

    def __init__(self, message: str, name: str, value: Any = None) -> None:
        super().__init__(message)
        self.name = name
        self.value = value

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (Ray returns a worker's exceptions by pickle)
        return (type(self), (self.args[0], self.name, self.value))


class ModelError(ValueError):
    """The ``model.factory`` cannot serve this study: it does not import, does not return an
    ``nn.Module``, fails on a batch, or returns outputs of the wrong shape.

    ``str(err)`` is the message for the user (it names the factory, the configuration and the fix).

    Attributes
    ----------
    factory : str
        The import path ``package.module:function``.
    params : dict or None
        The configuration it failed for; ``None`` when it failed before it was called (import).
    """

    def __init__(self, message: str, factory: str, params: Mapping[str, Any] | None = None) -> None:
        super().__init__(message)
        self.factory = factory
        self.params = None if params is None else dict(params)

    def __reduce__(self) -> tuple[Any, ...]:  # pickled whole (Ray returns a worker's exceptions by pickle)
        return (type(self), (self.args[0], self.factory, self.params))


def check_param_names(names: Iterable[str], settings: TrialSettings) -> None:
    """Raise :class:`HyperparameterError` if a name is not tunable for ``settings``.

    Parameters
    ----------
    names
        Hyperparameter names of a search space or of one trial.
    settings
        With ``model.factory`` set, any name is allowed (extra names go to the factory); with a
        ``trainable``, any name too (every param goes to your function).

    Raises
    ------
    HyperparameterError
        Naming the first unknown key (``name``) and listing the allowed names.
    """
    if settings.model.factory is not None or settings.trainable is not None:
        return
    for name in names:
        if name not in TUNABLE_PARAMS:
            raise HyperparameterError(
                f"unknown hyperparameter {name!r}; the built-in MLP can tune: "
                f"{', '.join(sorted(TUNABLE_PARAMS))} (set model.factory to pass other names "
                "to your own model, or trainable to pass every name to your own training function)",
                name,
            )


def _as_int(name: str, value: Any, minimum: int) -> int:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or int(value) != value):
        raise HyperparameterError(f"hyperparameter {name!r} must be an integer, got {value!r}", name, value)
    if int(value) < minimum:
        raise HyperparameterError(f"hyperparameter {name!r} must be >= {minimum}, got {value!r}", name, value)
    return int(value)


def _as_float(name: str, value: Any, low: float, high: float | None, *, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HyperparameterError(f"hyperparameter {name!r} must be a number, got {value!r}", name, value)
    v = float(value)
    bad_low = v <= low if low_open else v < low
    if bad_low or (high is not None and v >= high) or v != v:
        rng = f"{'(' if low_open else '['}{low}, {high if high is not None else 'inf'})"
        raise HyperparameterError(f"hyperparameter {name!r} must be in {rng}, got {value!r}", name, value)
    return v


def _as_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise HyperparameterError(f"hyperparameter {name!r} must be one of {list(choices)}, got {value!r}", name, value)
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
    HyperparameterError
        For an unknown name (listing the allowed names) or a value the parameter cannot take
        (``name`` and ``value`` say which).
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
                raise HyperparameterError(
                    "n_layers is tuned without hidden_size while model.hidden is empty", "n_layers", p["n_layers"]
                )
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
        task=settings.task,
        loss=settings.loss,
        params=p,
    )
