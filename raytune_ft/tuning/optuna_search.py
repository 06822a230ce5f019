"""Optuna as the searcher (`search_alg.type: optuna`), on Ray Tune's `OptunaSearch`, with
several objectives, and earlier trials given to the study as completed trials (warm start).

Tune hands a searcher one metric and mode (the first objective, which schedulers watch);
`MultiObjectiveOptuna` keeps the full lists it was built with, so the study optimises every
objective. Its sampler is seeded from `search_alg.seed`: a seeded run samples the same
configurations again (with trials finishing in the same order).
"""

from __future__ import annotations

from typing import Any

from ray.tune.search.optuna import OptunaSearch

from raytune_ft.config import ExperimentConfig


def make_sampler(name: str, seed: int | None, multivariate: bool, n_initial: int):
    """The Optuna sampler `search_alg.sampler` names, seeded; `n_initial` random trials
    before a model-based sampler takes over."""
    import warnings

    import optuna

    with warnings.catch_warnings():  # multivariate TPE and QMC are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(optuna.samplers, name, seed, multivariate, n_initial)


def _sampler(samplers, name: str, seed: int | None, multivariate: bool, n_initial: int):
    if name == "tpe":
        return samplers.TPESampler(seed=seed, multivariate=multivariate,
                                   n_startup_trials=n_initial)
    if name == "gp":
        return samplers.GPSampler(seed=seed, n_startup_trials=n_initial)
    if name == "cmaes":
        return samplers.CmaEsSampler(seed=seed, n_startup_trials=n_initial)
    if name == "nsga2":
        return samplers.NSGAIISampler(seed=seed)
    if name == "qmc":
        return samplers.QMCSampler(seed=seed, scramble=seed is not None)
    return samplers.RandomSampler(seed=seed)


class MultiObjectiveOptuna(OptunaSearch):
    """`OptunaSearch` whose metric and mode stay the lists it was built with, and whose
    study starts with `observations` (parameters, values per objective) as completed trials.

    Tune calls `set_search_properties(metric, mode, space)` with the first objective; only
    the space is taken from it. A module-level class: Tune pickles the searcher's state.
    """

    def __init__(self, *, observations: list[tuple[dict, list[float]]] = (), **kwargs):
        self._observations = list(observations)
        super().__init__(**kwargs)

    def set_search_properties(self, metric, mode, config: dict, **spec) -> bool:
        return super().set_search_properties(None, None, config, **spec)

    def _setup_study(self, mode):
        super()._setup_study(mode)
        import optuna

        single = not isinstance(self._metric, list)
        for params, values in self._observations:
            trial = optuna.trial.create_trial(
                params=params, distributions=self._space,
                **({"value": values[0]} if single else {"values": values}))
            self._ot_study.add_trial(trial)
        self._observations = []  # in the study now (a restored searcher has them there)

    @property
    def study(self):
        """The Optuna study (tests read the trials it learned from)."""
        return self._ot_study


def build_optuna_search(config: ExperimentConfig, observations=None) -> MultiObjectiveOptuna:
    """The searcher for `config`; `observations`: `tuning.warm_start.Observations`."""
    cfg = config.search_alg
    objectives = config.objective_list()
    metrics = [metric for metric, _ in objectives]
    modes = [mode for _, mode in objectives]
    several = len(objectives) > 1
    seen: list[tuple[dict[str, Any], list[float]]] = []
    if observations is not None:
        seen = [(point, values) for point, values in
                zip(observations.points, observations.values(objectives))]
    return MultiObjectiveOptuna(
        metric=metrics if several else metrics[0], mode=modes if several else modes[0],
        sampler=make_sampler(cfg.sampler or "tpe", cfg.seed, cfg.multivariate is not False,
                             cfg.n_initial_points),
        points_to_evaluate=[dict(p) for p in cfg.points_to_evaluate] or None,
        observations=seen)
