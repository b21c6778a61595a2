"""The study file: a typed, validated description of one study.

Every section is a pydantic model with ``extra="forbid"``, so a typo'd key is an error. Validation
happens here, in one place, before anything runs; :func:`load_spec` turns pydantic's errors into
lines of the form ``space.lr.low: must be > 0 for log scale``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from trials import (
    METRICS,
    TASKS,
    CVSpec,
    DataSpec,
    HyperparameterError,
    ModelSpec,
    TrainingSpec,
    TrialSettings,
    check_param_names,
    check_task_settings,
    group_source_error,
    metric_direction,
    resolve_hyperparams,
)
from trials._config import callable_by_name, check_callable_field

__all__ = [
    "CategoricalParam",
    "CheckpointSpec",
    "FloatParam",
    "IntParam",
    "NotifySpec",
    "PrunerSpec",
    "RefitSpec",
    "ResourcesSpec",
    "RetrySpec",
    "SpecError",
    "StudySpec",
    "TPESpec",
    "load_spec",
    "load_spec_text",
    "parse_spec",
]

SCHEMA_VERSION = 1
_NAME_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
_SUBKEY_RE = re.compile(r"^[a-z_]+: ")


class SpecError(ValueError):
    """A study file is invalid. ``str(err)`` lists one ``key.path: problem`` line per error."""

    def __init__(self, errors: list[str], source: str | None = None) -> None:
        self.errors = errors
        self.source = source
        head = f"invalid study file {source}" if source else "invalid study spec"
        super().__init__(head + ":\n" + "\n".join(f"  {e}" for e in errors))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Scalar = str | int | float | bool


class FloatParam(_Model):
    """A float parameter: ``low``/``high`` (random, TPE) and/or ``values`` (grid)."""

    type: Literal["float"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    values: tuple[float, ...] | None = None

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> FloatParam:
        _check_range(self, integer=False, strict=_strict(info))
        return self


class IntParam(_Model):
    """An integer parameter: ``low``/``high`` (inclusive) and/or ``values`` (grid)."""

    type: Literal["int"]
    low: int | None = None
    high: int | None = None
    log: bool = False
    step: int = 1
    values: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> IntParam:
        _check_range(self, integer=True, strict=_strict(info))
        return self


class CategoricalParam(_Model):
    """A categorical parameter: one of ``choices`` (strings, numbers or booleans)."""

    type: Literal["categorical"]
    choices: tuple[Scalar, ...]

    @field_validator("choices")
    @classmethod
    def _non_empty(cls, v: tuple[Scalar, ...]) -> tuple[Scalar, ...]:
        if not v:
            raise ValueError("must list at least one choice")
        if len(set(map(repr, v))) != len(v):
            raise ValueError(f"has duplicates: {list(v)}")
        return v


def _strict(info: ValidationInfo) -> bool:
    """False for a spec stored with a study: checks added later must not lock its owner out of it."""
    return not (info.context or {}).get("stored", False)


def _check_range(p: FloatParam | IntParam, *, integer: bool, strict: bool = True) -> None:
    if p.step is not None and p.step <= 0:
        raise ValueError(f"step: must be > 0 (got {p.step}); use a positive step or leave it out")
    if p.values is not None:
        if not p.values:
            raise ValueError("values: must list at least one value")
        if strict and len(set(p.values)) != len(p.values):
            raise ValueError(f"values: has duplicates {list(p.values)}; list each value once (a grid would run "
                             "the same point twice)")
        if p.log and any(v <= 0 for v in p.values):
            raise ValueError("values: must all be > 0 for log scale")
        if p.low is None and p.high is None:
            return
    if p.low is None or p.high is None:
        raise ValueError("needs both low and high (or, for strategy grid, a values list)")
    if not (math.isfinite(p.low) and math.isfinite(p.high)):
        raise ValueError("low and high must be finite numbers")
    if p.low > p.high:
        raise ValueError(f"low ({p.low}) must be <= high ({p.high})")
    if p.log:
        if p.low <= 0:
            raise ValueError(f"low: must be > 0 for log scale (got {p.low}); use log: false or a positive low")
        has_step = p.step is not None and not (integer and p.step == 1)
        if has_step:
            raise ValueError("step cannot be combined with log: true")
    # in decimal, as Optuna compares: 0.3 - 0.1 is 0.19999999999999998 in binary, yet step 0.2 fits
    if strict and p.step is not None and p.high > p.low and Decimal(str(p.step)) > _span(p):
        raise ValueError(f"step: {p.step} is larger than high - low ({p.high - p.low:g}), so only low would ever "
                         "be tried; use a smaller step or leave it out")


Param = Annotated[FloatParam | IntParam | CategoricalParam, Field(discriminator="type")]


def _infer_param_type(raw: Any) -> Any:
    """Fill in ``type`` where it is unambiguous: ``choices`` -> categorical; ``values`` of ints/floats."""
    if not isinstance(raw, Mapping) or "type" in raw:
        return raw
    raw = dict(raw)
    if "choices" in raw:
        raw["type"] = "categorical"
    elif isinstance(raw.get("values"), list) and raw["values"]:
        vals = raw["values"]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            raw["type"] = "int"
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            raw["type"] = "float"
        else:
            raw = {"type": "categorical", "choices": vals, **{k: v for k, v in raw.items() if k != "values"}}
    return raw


# which pruner types read each option
_PRUNER_OPTIONS = {"n_startup_trials": ("median",), "n_warmup_steps": ("median",),
                   "min_resource": ("successive_halving", "hyperband"),
                   "reduction_factor": ("successive_halving", "hyperband")}


class PrunerSpec(_Model):
    """Stop bad trials early, from the per-epoch mean over folds (Optuna pruners)."""

    type: Literal["none", "median", "successive_halving", "hyperband"] = "none"
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(3, ge=0)
    min_resource: int = Field(1, ge=1)
    reduction_factor: int = Field(3, ge=2)

    @model_validator(mode="after")
    def _options_of_this_type(self, info: ValidationInfo) -> PrunerSpec:
        """An option the chosen pruner does not read is a mistake to point out, not to ignore."""
        if not _strict(info):
            return self
        # a stored spec lists every option with its default: only a changed value is a mistake
        unused = sorted(k for k, types in _PRUNER_OPTIONS.items() if k in self.model_fields_set
                        and self.type not in types and getattr(self, k) != type(self).model_fields[k].default)
        if unused:
            raise ValueError("\n".join(f"{k}: not used by pruner type {self.type} (only by "
                                        f"{' or '.join(_PRUNER_OPTIONS[k])}); remove it or change type"
                                        for k in unused))
        return self


class TPESpec(_Model):
    """Options of the TPE sampler (used by ``strategy: tpe``)."""

    n_startup_trials: int = Field(10, ge=0)
    multivariate: bool = True
    constant_liar: bool = True


class ResourcesSpec(_Model):
    """What one trial needs on a Ray worker and how many run at once."""

    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: int | None = Field(None, ge=1)
    parallel_folds: bool = False
    stack_trials: int = Field(1, ge=1, le=64)

    @field_validator("gpus_per_trial")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and not float(v).is_integer():
            raise ValueError(f"must be a fraction <= 1 or a whole number of GPUs (got {v})")
        return v


class RetrySpec(_Model):
    """How often a trial is run again after a failure."""

    max_retries: int = Field(1, ge=0, description="re-runs of a trial whose code raised (OOM excluded)")
    worker_crash_retries: int = Field(3, ge=0, description="Ray re-executions when a worker process dies")


class RefitSpec(_Model):
    """How the best configuration is refit on all non-test rows for its held-out test score."""

    epochs: Literal["cv_median", "early_stopping"] = Field(
        "cv_median",
        description="cv_median: train every non-test row, no inner split, for the median of the best trial's "
                    "folds' best epochs; early_stopping: early stopping on an inner cv.val_fraction split")


class CheckpointSpec(_Model):
    """How often a running trial saves its whole state to the artifact store (``checkpoint``), so that
    a re-run of an interrupted trial goes on from there. Neither key set: no checkpoints."""

    every_epochs: int | None = Field(None, ge=1, description="save after every N epochs")
    every_s: float | None = Field(None, gt=0, description="save at the first epoch boundary N seconds after the "
                                                          "last save")
    keep_best: bool = Field(False, description="keep the checkpoint of the study's best trial (saved once more "
                                               "when it ends: every fold's best weights), for an ensemble")

    @property
    def enabled(self) -> bool:
        return self.every_epochs is not None or self.every_s is not None


class NotifySpec(_Model):
    """Where to POST a JSON message when the study finishes, fails or stalls (``notify``)."""

    webhook: str = Field(description="http(s) URL; it may hold a secret, so it is never stored with the study")
    stall_after_s: float = Field(3600.0, gt=0, description="a run with no trial finished for this long has stalled")

    @field_validator("webhook")
    @classmethod
    def _url(cls, v: str) -> str:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(v.strip())
            host = parts.hostname
        except ValueError:
            parts, host = None, None
        if parts is None or parts.scheme not in ("http", "https") or not host:
            raise ValueError("must be an http:// or https:// URL with a host, e.g. https://hooks.example.com/T0/B1")
        return v.strip()


class StudySpec(_Model):
    """A whole study file. See the README's study-file reference for every key."""

    version: Literal[1] = SCHEMA_VERSION
    name: str
    strategy: Literal["grid", "random", "tpe"] = "tpe"
    task: Literal[TASKS] = "classification"  # type: ignore[valid-type]
    metric: Literal[METRICS] = "val_accuracy"  # type: ignore[valid-type]  (regression: val_mse)
    direction: Literal["maximize", "minimize"] | None = None
    n_trials: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    space: dict[str, Param]
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    training: TrainingSpec = TrainingSpec()
    cv: CVSpec = CVSpec()
    pruner: PrunerSpec = PrunerSpec()
    tpe: TPESpec = TPESpec()
    resources: ResourcesSpec = ResourcesSpec()
    retries: RetrySpec = RetrySpec()
    refit: RefitSpec = RefitSpec()
    checkpoint: CheckpointSpec = CheckpointSpec()
    trainable: str | Callable[..., Any] | None = None
    """Your own training function, ``package.module:function`` (from Python, the callable itself),
    called once per fold with a :class:`trials.TrainContext`; stored by name only when a callable."""

    @field_serializer("trainable", when_used="json")
    def _trainable_by_name(self, v: str | Callable[..., Any] | None) -> str | None:
        return callable_by_name(v)

    @field_validator("trainable")
    @classmethod
    def _trainable_path(cls, v: str | Callable[..., Any] | None) -> str | Callable[..., Any] | None:
        check_callable_field("trainable", v)
        return v

    @model_validator(mode="before")
    @classmethod
    def _metric_of_the_task(cls, raw: Any) -> Any:
        """No ``metric`` given: ``val_accuracy`` for classification, ``val_mse`` for regression."""
        if isinstance(raw, Mapping) and raw.get("metric") is None and raw.get("task") == "regression":
            return {**raw, "metric": "val_mse"}
        return raw

    # not stored with the study (to_dict leaves it out): a webhook URL often is a secret, and the
    # stored spec is shown by the dashboard; a file that changes it never counts as a changed spec
    notify: NotifySpec | None = Field(None, exclude=True)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip() or not _NAME_RE.match(v):
            raise ValueError("must be 1-200 printable characters (spaces, quotes and unicode are fine)")
        return v

    @field_validator("space", mode="before")
    @classmethod
    def _space(cls, v: Any) -> Any:
        if isinstance(v, Mapping):
            if not v:
                raise ValueError("is empty; add at least one parameter, e.g. lr: {type: float, low: 1e-4, "
                                 "high: 0.1, log: true}")
            return {k: _infer_param_type(p) for k, p in v.items()}
        return v

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> StudySpec:
        errors = check_task_settings(self.task, metric=self.metric, monitor=self.training.monitor,
                                     loss=self.training.loss)
        errors += _check_task_data(self.task, self.metric, self.data)
        group_error = group_source_error(self.data, self.cv)
        if group_error:
            errors.append(group_error)
        if errors:  # the settings below cannot be built for another task's monitor or loss
            raise ValueError("\n".join(errors))
        for name in self.space:
            try:
                check_param_names([name], self.settings)
            except ValueError as e:
                errors.append(f"space.{name}: {e}")
        if not errors and _strict(info) and self.trainable is None:  # a trainable's params are its own
            errors += _check_param_values(self.space, self.settings, grid=self.strategy == "grid")
        if self.trainable is not None:
            errors += _check_trainable_settings(self)
        if _strict(info) and self.data.source not in ("npz", "csv", "parquet", "idx"):
            # data.source defaults to digits: a path without a source trained on the bundled digits
            for key in ("path", "target"):
                if getattr(self.data, key):
                    errors.append(f"data.{key}: {getattr(self.data, key)!r} is set, but data.source is "
                                  f"{self.data.source!r}, which reads no file; set data.source to csv, parquet, "
                                  f"npz or idx (or remove data.{key})")
        want = metric_direction(self.metric)
        if self.direction is not None and self.direction != want:
            errors.append(f"direction: {self.direction} does not fit metric {self.metric}, which is "
                          f"{want}d; remove direction or set it to {want}")
        if self.strategy == "grid":
            for name, p in self.space.items():
                if not isinstance(p, CategoricalParam) and p.values is None:
                    errors.append(f"space.{name}.values: strategy grid needs a list of values for every "
                                  f"parameter, e.g. values: [{p.low}, {p.high}]")
            if not errors and self.n_trials is not None and self.n_trials > self.grid_size:
                errors.append(f"n_trials: {self.n_trials} exceeds the grid's {self.grid_size} points; "
                              "omit n_trials for grid (it defaults to the grid size)")
            # a grid runs every point exactly once; a subset would be the first points in the
            # sampler's order, reported as if the grid were done (stored specs keep what they had)
            if not errors and self.n_trials is not None and self.n_trials < self.grid_size and _strict(info):
                errors.append(f"n_trials: {self.n_trials} is below the grid's {self.grid_size} points, and grid runs "
                              f"every point exactly once; omit n_trials, or use strategy random to sample "
                              f"{self.n_trials} configurations")
        else:
            for name, p in self.space.items():
                if not isinstance(p, CategoricalParam) and (p.low is None or p.high is None):
                    errors.append(f"space.{name}: strategy {self.strategy} needs low and high "
                                  "(values lists are for strategy grid)")
            if self.n_trials is None:
                errors.append(f"n_trials: required for strategy {self.strategy}")
        if self.resources.parallel_folds and self.cv.folds == 1:
            errors.append("resources.parallel_folds: needs cv.folds >= 2")
        if self.resources.parallel_folds and self.resources.stack_trials > 1:
            errors.append(f"resources.stack_trials: {self.resources.stack_trials} cannot be combined with "
                          "resources.parallel_folds: true (a stack trains all folds in one task); set one of them "
                          "back to its default")
        if self.checkpoint.keep_best and not self.checkpoint.enabled:
            errors.append("checkpoint.keep_best: true keeps the best trial's checkpoint, but no checkpoint is "
                          "saved: set checkpoint.every_epochs (or every_s) too, or remove keep_best")
        if errors:
            raise ValueError("\n".join(errors))
        return self

    # -- derived views -------------------------------------------------------------------------
    @property
    def settings(self) -> TrialSettings:
        if self.trainable is None:
            return TrialSettings(task=self.task, model=self.model, training=self.training, cv=self.cv)
        return TrialSettings(task=self.task, model=self.model, training=self.training, cv=self.cv,
                             trainable=self.trainable, metric=self.metric)

    @property
    def study_direction(self) -> str:
        return self.direction or metric_direction(self.metric)

    @property
    def grid(self) -> dict[str, list[Scalar]]:
        return {n: list(p.choices if isinstance(p, CategoricalParam) else p.values or ())
                for n, p in self.space.items()}

    @property
    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid.values())

    @property
    def budget(self) -> int:
        """Total trials of the study (the grid size for grid unless ``n_trials`` is smaller)."""
        if self.strategy == "grid":
            return min(self.n_trials or self.grid_size, self.grid_size)
        assert self.n_trials is not None  # guaranteed by validation
        return self.n_trials

    def probe_params(self) -> list[dict[str, Any]]:
        """Configurations that try the model before a study starts: every parameter at its first
        proposed value (a range's ``low``, a list's first entry), then every one at its last."""
        values = _proposed_values(self.space, grid=self.strategy == "grid")
        first = {n: v[0] for n, v in values.items() if v}
        last = {n: v[-1] for n, v in values.items() if v}
        return [first] if first == last else [first, last]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as stored with the study (without ``notify``)."""
        return self.model_dump(mode="json")


def _check_trainable_settings(spec: StudySpec) -> list[str]:
    """Keys that a study with its own training function cannot also use."""
    errors = []
    if spec.model.factory is not None:
        errors.append("model.factory: not used with trainable (your training function builds its own model); "
                      "remove one of them")
    if spec.resources.stack_trials > 1:
        errors.append(f"resources.stack_trials: {spec.resources.stack_trials} cannot be combined with trainable "
                      "(your function trains one configuration at a time); remove resources.stack_trials")
    return errors


def _check_task_data(task: str, metric: str, data: DataSpec) -> list[str]:
    """A bundled or generated data set whose target does not fit the task or the metric."""
    errors: list[str] = []
    if data.source == "diabetes" and task != "regression":
        errors.append("data.source: diabetes is a regression data set (a disease score); set task: regression")
    if metric == "val_auc":
        n = {"digits": 10, "synthetic": data.n_classes}.get(data.source)
        if n is not None and n != 2:
            errors.append(f"metric: val_auc needs two classes, and data.source {data.source} has {n}; use "
                          "val_f1_macro or val_accuracy" + (", or set data.n_classes: 2" if data.source == "synthetic"
                                                            else ""))
    return errors


# built-in hyperparameters that only take whole numbers: a float range would propose fractions
_INTEGER_PARAMS = ("batch_size", "hidden_size", "n_layers")


def _proposed_values(space: Mapping[str, Any], *, grid: bool) -> dict[str, list[Any]]:
    """The values worth checking per parameter: a grid's listed values, a categorical's choices,
    the ends of a range (``high`` rounded down to a whole number of steps)."""
    candidates: dict[str, list[Any]] = {}
    for name, p in space.items():
        if isinstance(p, CategoricalParam):
            candidates[name] = list(p.choices)
        elif grid and p.values is not None:
            candidates[name] = list(p.values)
        elif p.low is not None and p.high is not None:
            candidates[name] = [p.low, _proposed_high(p)]
    return candidates


def _check_param_values(space: Mapping[str, Any], settings: TrialSettings, *, grid: bool) -> list[str]:
    """Every value the space can propose must be valid for the model (``lr`` > 0, ``dropout`` in
    [0, 1), integer batch sizes, known optimizers ...): checked here, at load time, on what the
    strategy proposes (grid: the listed values; random and TPE: the ends of each range, ``high``
    rounded down to a whole number of steps), rather than failing each trial at run time."""
    errors: list[str] = []
    for name in _INTEGER_PARAMS:
        if isinstance(space.get(name), FloatParam):
            errors.append(f"space.{name}: must be type int or categorical (a float range would propose "
                          f"fractional values such as {name}=16.5)")
    candidates = _proposed_values(space, grid=grid)

    def valid(params: dict[str, Any]) -> bool:
        try:
            resolve_hyperparams(settings, params)
        except (ValueError, TypeError, OverflowError):
            return False
        return True

    # the other parameters take a value valid on its own, so that an error names its own parameter
    base = {n: next((v for v in c if valid({n: v})), c[0]) for n, c in candidates.items() if c}
    seen: set[str] = set()
    for name, values in candidates.items():
        for value in values:
            try:
                resolve_hyperparams(settings, {**base, name: value})
            except (ValueError, TypeError, OverflowError) as e:
                named = e.name if isinstance(e, HyperparameterError) else None
                key = named if named in space else name
                line = f"space.{key}: {e}; change the range or choices so that every value is valid"
                if line not in seen:
                    seen.add(line)
                    errors.append(line)
    return errors


def _format_errors(err: ValidationError) -> list[str]:
    out: list[str] = []
    for e in err.errors():
        loc = [str(x) for x in e["loc"] if x not in ("float", "int", "categorical", "function-after")]
        msg = e["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            msg = msg.removeprefix(prefix)
        if e["type"] == "extra_forbidden":
            msg = "unknown key (typo?); remove it or check the README's study-file reference"
        elif e["type"] == "union_tag_invalid" or e["type"] == "union_tag_not_found":
            msg = "type: must be float, int or categorical"
            if e["type"] == "union_tag_invalid":
                msg += f" (got {e.get('input', {}).get('type')!r})" if isinstance(e.get("input"), dict) else ""
        elif e["type"] == "literal_error" or (
                isinstance(e.get("input"), (str, int, float, bool)) and "got" not in msg):
            msg = f"{msg} (got {e.get('input')!r})"  # the bad value, so the user can find it
        key = ".".join(loc)
        for line in msg.split("\n"):
            if not key:  # cross-field checks name their own key path
                out.append(line)
            elif _SUBKEY_RE.match(line):  # "low: must be > 0" under space.lr -> space.lr.low: ...
                out.append(f"{key}.{line}")
            else:
                out.append(f"{key}: {line}")
    return out


def parse_spec(
    raw: Mapping[str, Any], *, source: str | None = None, stored: bool = False, **overrides: Any
) -> StudySpec:
    """Validate a study given as a mapping; ``overrides`` (not None) replace top-level keys.

    ``stored=True`` for a spec stored with a study: checks added after it was stored (which values
    a parameter may take, duplicate grid values, steps, pruner options) are not applied to it, so
    its study can always be resumed.
    """
    if not isinstance(raw, Mapping):
        raise SpecError([f"the top level must be a mapping of keys, got {type(raw).__name__}"], source)
    data = dict(raw)
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return StudySpec.model_validate(data, context={"stored": stored})
    except ValidationError as err:
        raise SpecError(_format_errors(err), source) from None


def _span(p: FloatParam | IntParam) -> Decimal:
    assert p.low is not None and p.high is not None
    return Decimal(str(p.high)) - Decimal(str(p.low))


def _proposed_high(p: FloatParam | IntParam) -> float | int:
    """The largest value a sampler proposes: ``high`` rounded down to ``low`` + a whole number of
    steps, as Optuna's distributions do."""
    assert p.low is not None and p.high is not None
    if p.step is None or p.log:
        return p.high
    step = Decimal(str(p.step))
    top = Decimal(str(p.low)) + (_span(p) // step) * step
    return int(top) if isinstance(p, IntParam) else float(top)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults`; its keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                seen = key in keys
            except TypeError:  # unhashable: SafeLoader itself says so
                break
            if seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice; keep one of them", key_node.start_mark)
            keys.add(key)
        return super().construct_mapping(node, deep=deep)


def load_spec(path: str | Path, **overrides: Any) -> StudySpec:
    """Read and validate a YAML study file. Raises :class:`SpecError` with one line per problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([f"{path}: no such file; create one with `hpsearch init {path}`"]) from None
    except UnicodeDecodeError as e:
        raise SpecError([f"not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); save the file as "
                         "UTF-8"], str(path)) from None
    except OSError as e:
        raise SpecError([f"{path}: cannot read ({e.strerror})"]) from None
    return load_spec_text(text, source=str(path), **overrides)


def load_spec_text(text: str, *, source: str | None = None, **overrides: Any) -> StudySpec:
    """Validate a study file's text (YAML, or JSON, which is YAML too), as :func:`load_spec` does.

    ``source`` names the file in messages. Raises :class:`SpecError` with one line per problem.
    """
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.YAMLError as e:
        raise SpecError([f"not valid YAML: {e}"], source) from None
    if raw is None:
        raise SpecError(["the file is empty; start from `hpsearch init`"], source)
    return parse_spec(raw, source=source, **overrides)
