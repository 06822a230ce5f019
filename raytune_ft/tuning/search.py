"""The search space and search algorithm of an experiment, and PBT/PB2's explore helpers
(no Ray start here; the schedulers are registered in `schedulers.py`).

PBT and PB2 explore inside the searched domains: Ray's PBT multiplies a value by its
perturbation factors without clipping, and PB2 fits its model on linear bounds, so an
explore step here is followed by `StayInDomain`, and PB2 sees log-scaled keys as log10.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ray import tune
from ray.tune.schedulers.pb2 import PB2

from raytune_ft.config import INTEGER_FIELDS, Domain, ExperimentConfig
from raytune_ft.plan import TrialPlan, plan_experiment
from raytune_ft.tuning.population import RescuePopulation


def to_tune(domain: Domain) -> Any:
    """Our YAML distribution syntax as a Ray Tune domain."""
    kind, args = domain.kind, domain.args
    if kind == "constant":
        return args[0]
    if kind == "grid":
        return tune.grid_search(list(args))
    if kind == "choice":
        return tune.choice(list(args))
    if kind == "randint":
        return tune.randint(args[0], args[1] + 1)  # YAML bounds are inclusive
    factories = {"loguniform": tune.loguniform, "uniform": tune.uniform,
                 "quniform": tune.quniform, "qloguniform": tune.qloguniform}
    return factories[kind](*args)


def param_space(config: ExperimentConfig, plan: TrialPlan | None = None) -> dict[str, Any]:
    """The Tune search space; `plan`: the experiment's (else computed from `config`)."""
    plan = plan_experiment(config) if plan is None else plan
    return {key: to_tune(domain) for key, domain in plan.space.items()}


def _bounds(domain: Domain) -> list[float]:
    """A numeric domain's [low, high]; PB2 treats a numeric choice list as that range."""
    if domain.kind in ("choice", "grid"):
        return [min(domain.args), max(domain.args)]
    return [domain.args[0], domain.args[1]]


@dataclass(frozen=True)
class Range:
    """Where an explored value must land: [low, high], on integers, on multiples of q, or
    on the values of a numeric choice list."""

    low: float
    high: float
    integer: bool = False
    q: float | None = None
    values: tuple[float, ...] = ()

    def clip(self, value: float) -> float | int:
        """The nearest allowed value (unchanged when it is already allowed)."""
        if self.values:  # ties go to the smaller value
            return min(sorted(self.values), key=lambda v: abs(v - value))
        if self.integer:
            return min(max(int(round(value)), math.ceil(self.low)), math.floor(self.high))
        if self.q is not None:  # the ends are multiples of q (parse_domain checks)
            value = round(value / self.q) * self.q
        return min(max(value, self.low), self.high)


def mutation_ranges(space: dict[str, Domain], keys: list[str]) -> dict[str, Range]:
    """The range each numeric mutated key must stay in; integer settings stay integers.

    A numeric choice list keeps its values: PBT moves within the list anyway, and PB2's
    proposal in [min, max] goes to the nearest listed value (batch sizes [8, 16, 32] never
    give 23). A list of names has no range: PBT only ever picks from it.
    """
    ranges = {}
    for key in keys:
        domain = space[key]
        values = ()
        if domain.kind in ("choice", "grid"):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in domain.args):
                continue
            values = tuple(domain.args)
        q = domain.args[2] if domain.kind in ("quniform", "qloguniform") else None
        low, high = _bounds(domain)
        ranges[key] = Range(low, high, integer=key in INTEGER_FIELDS, q=q, values=values)
    return ranges


class StayInDomain:
    """PBT and PB2's `custom_explore_fn`: every explored value back inside its range.

    PBT's 0.9 x 1.2 = 1.08 would otherwise leave `layer_decay: uniform [0.75, 1.0]`, fail the
    trial's validation and retry with the same config; PB2 proposes float32 values and
    truncates integers. A module-level class, so the scheduler pickles with Tune's state.
    """

    def __init__(self, ranges: dict[str, Range]) -> None:
        self.ranges = dict(ranges)

    def __call__(self, config: dict) -> dict:
        clipped = {key: limits.clip(config[key]) for key, limits in self.ranges.items()
                   if key in config}
        return {**config, **clipped}


class LogScalePB2(RescuePopulation, PB2):
    """PB2 whose Gaussian process sees log-scaled keys (loguniform domains) as log10 values,
    with the rescue of diverged members and the exploit log of `tuning.population`.

    Ray's PB2 normalises each bound linearly: on [1e-5, 1e-3] its proposals crowd the top
    decade. Here the bounds, the data the model fits and its proposals for `log_keys` are
    log10; trial configs, results and the PBT logs keep the linear values.
    """

    def __init__(self, *, hyperparam_bounds: dict, log_keys: tuple[str, ...] = (),
                 custom_explore_fn=None, **kwargs) -> None:
        self._log_keys = tuple(log_keys)
        self._after_explore = custom_explore_fn  # applied after the log10 values map back
        super().__init__(hyperparam_bounds=log_bounds(hyperparam_bounds, self._log_keys),
                         **kwargs)

    def _save_trial_state(self, state, time, result, trial):
        score = super()._save_trial_state(state, time, result, trial)
        last = self.data.index[-1]  # the row PB2 just appended from trial.config
        for key in self._log_keys:
            self.data.loc[last, key] = math.log10(self.data.loc[last, key])
        return score

    def _get_new_config(self, trial, trial_to_clone):
        rows = len(self.data)
        config, operations = super()._get_new_config(trial, trial_to_clone)
        proposed = len(self.data) > rows  # PB2 proposed (log10 values); else it copied
        if proposed:
            config = {**config, **{key: 10.0 ** float(config[key]) for key in self._log_keys}}
        if self._after_explore is not None:
            config = self._after_explore(config)
        if proposed:  # the model learns from what the trial runs: the clipped values
            final = [math.log10(config[k]) if k in self._log_keys else config[k]
                     for k in self._hyperparam_bounds_flat]
            self.data.loc[self.data.index[-1], list(self._hyperparam_bounds_flat)] = final
            self.current[-1] = final
        return config, operations


def log_bounds(bounds: dict[str, list[float]], log_keys: tuple[str, ...]) -> dict:
    """PB2 bounds with the log-scaled keys' [low, high] as log10."""
    return {key: [math.log10(low), math.log10(high)] if key in log_keys else [low, high]
            for key, (low, high) in bounds.items()}


def build_search_alg(config: ExperimentConfig, observations=None):
    """hyperopt TPE, Optuna (`tuning.optuna_search`), or Ray's variant generator for random
    and grid search; `observations`: earlier trials to learn from (`tuning.warm_start`)."""
    cfg = config.search_alg
    points = [dict(point) for point in cfg.points_to_evaluate]
    if cfg.type == "optuna":
        from raytune_ft.tuning.optuna_search import build_optuna_search

        return build_optuna_search(config, observations)
    if cfg.type == "tpe":
        from raytune_ft.tuning.warm_start import WarmHyperOpt

        observed = []
        if observations is not None:
            observed = list(zip(observations.points,
                                observations.rewards(0, config.objective_list())))
        return WarmHyperOpt(metric=config.metric, mode=config.mode,
                            n_initial_points=cfg.n_initial_points,
                            random_state_seed=cfg.seed, points_to_evaluate=points or None,
                            observed=observed)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.seed, points_to_evaluate=points or None)

