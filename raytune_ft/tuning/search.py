"""The search space and search algorithm of an experiment (no Ray start here; the schedulers
are registered in `raytune_ft.schedulers`)."""

from __future__ import annotations

from typing import Any

from raytune_ft.plan import TrialPlan
from raytune_ft.schedulers import to_tune
from raytune_ft.schema import ExperimentConfig


def param_space(plan: TrialPlan) -> dict[str, Any]:
    """The Tune search space of the experiment's plan."""
    return {key: to_tune(domain) for key, domain in plan.space.items()}


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

