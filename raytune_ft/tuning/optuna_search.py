"""Optuna as the searcher (`search_alg.type: optuna`), on Ray Tune's `OptunaSearch`, with
several objectives, and earlier trials given to the study as completed trials (warm start).

Tune hands a searcher one metric and mode (the first objective, which schedulers watch);
`MultiObjectiveOptuna` keeps the full lists it was built with, so the study optimises every
objective. Its sampler is seeded from `search_alg.seed`: a seeded run samples the same
configurations again (with trials finishing in the same order).
"""

from __future__ import annotations

import logging
import math
import threading
from typing import Any

from optuna.samplers import NSGAIISampler
from ray.tune.search.optuna import OptunaSearch

from raytune_ft.config import ExperimentConfig

log = logging.getLogger(__name__)
NSGA2_MAX_POPULATION = 50  # Optuna's default population, kept for large budgets


def nsga2_population(num_samples: int) -> int:
    """NSGA-II's population for a run of `num_samples` trials: a quarter of them (at least 2,
    Optuna's minimum; at most its default 50), so the search breeds at least ~4 generations.
    With Optuna's 50 a run of 6-20 trials never leaves its first, random, generation."""
    return min(NSGA2_MAX_POPULATION, max(2, num_samples // 4))


def make_sampler(name: str, seed: int | None, multivariate: bool, n_initial: int,
                 population: int = NSGA2_MAX_POPULATION):
    """The Optuna sampler `search_alg.sampler` names, seeded; `n_initial` random trials
    before a model-based sampler takes over; `population`: NSGA-II's generation size."""
    import warnings

    import optuna

    with warnings.catch_warnings():  # multivariate TPE and QMC are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _sampler(optuna.samplers, name, seed, multivariate, n_initial, population)


def _sampler(samplers, name: str, seed: int | None, multivariate: bool, n_initial: int,
             population: int):
    if name == "tpe":
        return samplers.TPESampler(seed=seed, multivariate=multivariate,
                                   n_startup_trials=n_initial)
    if name == "gp":
        return samplers.GPSampler(seed=seed, n_startup_trials=n_initial)
    if name == "cmaes":
        return samplers.CmaEsSampler(seed=seed, n_startup_trials=n_initial)
    if name == "nsga2":
        return PicklableNSGAII(seed=seed, population_size=population)
    if name == "qmc":
        return samplers.QMCSampler(seed=seed, scramble=seed is not None)
    return samplers.RandomSampler(seed=seed)


class PicklableNSGAII(NSGAIISampler):
    """Optuna's NSGA-II sampler, which Tune can pickle.

    Tune pickles the searcher, sampler included, into tuner.pkl when the `Tuner` is created and
    into the experiment's searcher state as the run goes; Optuna 5.1's NSGA-II holds a
    `threading.Lock` for its generation cache, and every run ended in `TypeError: cannot
    pickle '_thread.lock' object`. The lock guards a cache only: a restored copy gets a new
    one. Study attributes keep Optuna's own `NSGAIISampler:` keys.
    """

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


# GA samplers name their study attributes after their class (`__init_subclass__`)
PicklableNSGAII._GENERATION_KEY = NSGAIISampler._GENERATION_KEY
PicklableNSGAII._PARENT_CACHE_KEY_PREFIX = NSGAIISampler._PARENT_CACHE_KEY_PREFIX


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

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """`run.max_concurrent_trials`, kept here rather than by Tune's `ConcurrencyLimiter`,
        which drops the completion of a trial it no longer counts as live: an errored trial
        that `resume` restarted would finish unseen by the study."""
        self._max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str):
        live = self.__dict__.setdefault("_live", set())  # a study saved before had none
        if getattr(self, "_max_concurrent", 0) and len(live) >= self._max_concurrent:
            return None  # Tune asks again once a trial completes
        config = super().suggest(trial_id)
        if isinstance(config, dict):
            live.add(trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials:  # an errored trial that `resume` restarted
            return  # its intermediate values went to the study's failed trial already
        super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """A trial without a finite value for every objective (`checkpoint_mb`/`model_mb`
        of a trial that diverged before its first checkpoint are None) is told to the study
        as failed, which its samplers skip; Ray's own method would hand Optuna the None, fail
        in `tell` and leave the trial running in the study forever.

        A trial the study holds as failed that finishes after all (an errored trial that
        `resume` restarted from its checkpoint) is added to the study as a completed trial
        with its parameters and values: Optuna cannot change a finished trial, and Ray's
        method would drop the result."""
        self.__dict__.setdefault("_live", set()).discard(trial_id)
        metrics = self._metric if isinstance(self._metric, list) else [self._metric]
        values = [result.get(m) for m in metrics] if result and not error else None
        finite = values is not None and all(_finite(v) for v in values)
        if trial_id in self._completed_trials and trial_id in self._ot_trials:
            if finite:
                self._learn_resumed(trial_id, values)
            return
        if values is None or finite or trial_id not in self._ot_trials:
            super().on_trial_complete(trial_id, result, error)
            return
        import optuna

        missing = [m for m, v in zip(metrics, values) if not _finite(v)]
        log.warning("trial %s reported no finite %s: told to Optuna as failed", trial_id,
                    ", ".join(missing))
        self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.FAIL)
        self._completed_trials.add(trial_id)

    def _learn_resumed(self, trial_id: str, values: list[float]) -> None:
        import optuna

        failed = self._ot_study.get_trials(deepcopy=False)[self._ot_trials[trial_id].number]
        if failed.state != optuna.trial.TrialState.FAIL:
            log.warning("trial %s completed again; the study keeps its first result", trial_id)
            return
        single = not isinstance(self._metric, list)
        self._ot_study.add_trial(optuna.trial.create_trial(
            params=failed.params, distributions=failed.distributions,
            user_attrs={"ray_trial_id": trial_id, "resumed_from_trial": failed.number},
            **({"value": values[0]} if single else {"values": values})))
        log.info("trial %s finished after its resume: told to Optuna as trial %d", trial_id,
                 len(self._ot_study.trials) - 1)

    @property
    def study(self):
        """The Optuna study (tests read the trials it learned from)."""
        return self._ot_study


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


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
                             cfg.n_initial_points, nsga2_population(config.run.num_samples)),
        points_to_evaluate=[dict(p) for p in cfg.points_to_evaluate] or None,
        observations=seen)
