"""Strategies are Optuna samplers; pruners are Optuna pruners. Only the mapping is ours."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import GridSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from ._spec import CategoricalParam, FloatParam, StudySpec

__all__ = ["distributions", "make_pruner", "make_sampler", "sampler_seed"]


class _GridSampler(GridSampler):
    """:class:`optuna.samplers.GridSampler` for an ask/tell loop.

    Optuna's ``after_trial`` calls ``study.stop()``, which only works inside ``study.optimize``.
    Here the orchestrator ends the study itself when the budget (the grid size) is used up, so the
    hook is a no-op; everything else (which point to run next) is Optuna's.
    """

    def after_trial(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        return None


def sampler_seed(seed: int, n_existing_trials: int) -> int:
    """Seed for this invocation's sampler.

    A fresh study (no trials yet) always gets the same seed. A resumed study gets a seed that also
    depends on how many trials exist, so a seeded sampler does not replay its startup sequence
    (the first random points) after an interruption, yet the same history gives the same seed.
    """
    if n_existing_trials == 0:
        return seed
    return int(np.random.SeedSequence([seed, n_existing_trials]).generate_state(1)[0])


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """Optuna distributions of the search space (grid points as categorical values)."""
    out: dict[str, BaseDistribution] = {}
    for name, p in spec.space.items():
        if isinstance(p, CategoricalParam):
            out[name] = CategoricalDistribution(list(p.choices))
        elif spec.strategy == "grid":
            out[name] = CategoricalDistribution(list(p.values or ()))
        elif isinstance(p, FloatParam):
            out[name] = FloatDistribution(p.low, p.high, log=p.log, step=p.step)  # type: ignore[arg-type]
        else:
            out[name] = IntDistribution(p.low, p.high, log=p.log, step=p.step)  # type: ignore[arg-type]
    return out


def make_sampler(spec: StudySpec, *, n_existing_trials: int = 0) -> optuna.samplers.BaseSampler:
    """Sampler of ``spec.strategy``: grid -> GridSampler, random -> RandomSampler, tpe -> TPESampler."""
    if spec.strategy == "grid":
        # The grid order is a fixed shuffle by the study seed, so it must not change on resume:
        # GridSampler maps trial numbers to points of that order.
        return _GridSampler(spec.grid, seed=spec.seed)
    seed = sampler_seed(spec.seed, n_existing_trials)
    if spec.strategy == "random":
        return RandomSampler(seed=seed)
    return TPESampler(
        seed=seed,
        n_startup_trials=spec.tpe.n_startup_trials,  # counted over the whole study, so resume-safe
        multivariate=spec.tpe.multivariate,
        constant_liar=spec.tpe.constant_liar,
    )


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """Pruner of ``spec.pruner.type``; steps are epochs, values the mean over folds."""
    p = spec.pruner
    if p.type == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
    if p.type == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource, reduction_factor=p.reduction_factor
        )
    if p.type == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=spec.training.max_epochs,
            reduction_factor=p.reduction_factor,
        )
    return optuna.pruners.NopPruner()

