"""The search space and search algorithm of an experiment (no Ray start here; the schedulers
are registered in `raytune_ft.schedulers`)."""

from __future__ import annotations

from typing import Any

from raytune_ft.plan import TrialPlan
from raytune_ft.schedulers import to_tune
from raytune_ft.schema import ExperimentConfig

# The `tuner.pkl` of a PB2 experiment started before the component split names these classes
# here (`Tuner.restore` unpickles them by module path); they live in `raytune_ft.schedulers`.
_MOVED_TO_SCHEDULERS = ("LogScalePB2", "StayInDomain", "Range")


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


def __getattr__(name: str) -> Any:
    """The classes that moved to `raytune_ft.schedulers` (`_MOVED_TO_SCHEDULERS`), by their old
    path, for resuming an experiment started before the component split."""
    if name in _MOVED_TO_SCHEDULERS:
        import raytune_ft.schedulers

        return getattr(raytune_ft.schedulers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
