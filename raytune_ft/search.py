"""The search space, scheduler and search algorithm of an experiment (no Ray start here)."""

from __future__ import annotations

from typing import Any

from ray import tune

from raytune_ft.config import AshaConfig, Domain, ExperimentConfig, HyperbandConfig, PbtConfig


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


def param_space(config: ExperimentConfig) -> dict[str, Any]:
    return {key: to_tune(domain) for key, domain in config.space().items()}


def build_scheduler(config: ExperimentConfig):
    """A Ray Tune scheduler whose time unit is one evaluation interval (equal samples)."""
    from ray.tune.schedulers import (
        ASHAScheduler,
        FIFOScheduler,
        HyperBandScheduler,
        PopulationBasedTraining,
    )

    cfg, budget = config.scheduler, config.iterations
    if isinstance(cfg, AshaConfig):
        return ASHAScheduler(time_attr="training_iteration", max_t=budget,
                             grace_period=cfg.grace_period,
                             reduction_factor=cfg.reduction_factor, brackets=cfg.brackets)
    if isinstance(cfg, HyperbandConfig):
        return HyperBandScheduler(time_attr="training_iteration", max_t=budget,
                                  reduction_factor=cfg.reduction_factor)
    if isinstance(cfg, PbtConfig):
        space = config.space()
        common = dict(time_attr="training_iteration",
                      perturbation_interval=cfg.perturbation_interval,
                      quantile_fraction=cfg.quantile_fraction, synch=cfg.synch)
        if cfg.type == "pb2":
            from ray.tune.schedulers.pb2 import PB2

            bounds = {key: _bounds(space[key]) for key in cfg.mutations}
            return PB2(hyperparam_bounds=bounds, **common)
        # A choice list moves to a neighbouring value; a distribution is scaled by the
        # perturbation factors (log-scale steps) or resampled.
        mutations = {key: list(space[key].args) if space[key].kind in ("choice", "grid")
                     else to_tune(space[key]) for key in cfg.mutations}
        return PopulationBasedTraining(
            hyperparam_mutations=mutations, resample_probability=cfg.resample_probability,
            burn_in_period=cfg.burn_in_period,
            perturbation_factors=tuple(cfg.perturbation_factors), **common)
    return FIFOScheduler()


def _bounds(domain: Domain) -> list[float]:
    if domain.kind in ("choice", "grid"):
        return [min(domain.args), max(domain.args)]
    return [domain.args[0], domain.args[1]]


def build_search_alg(config: ExperimentConfig):
    """hyperopt TPE, or Ray's variant generator for random and grid search."""
    cfg = config.search_alg
    if cfg.type == "tpe":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(metric=config.metric, mode=config.mode,
                              n_initial_points=cfg.n_initial_points,
                              random_state_seed=cfg.seed)
    from ray.tune.search import BasicVariantGenerator

    return BasicVariantGenerator(random_state=cfg.seed)
