"""Warm start: the finished trials of earlier experiments, given to the searcher as
observations before it samples (`raytune-ft tune FILE --warm-start DIR [DIR ...]`).

An earlier experiment is compatible when it searched the same keys and every value its
trials ran with is one the new domain can produce; anything else is refused naming the
parameter. A trial counts when it ended normally (terminated, or stopped by a scheduler or
a stop rule) and reported every objective; its values are its last reported ones, as a
searcher is told at a trial's end. Optuna adds them to its study as completed trials;
hyperopt inserts them as evaluated points; random and grid search learn nothing from them,
so a warm start there is refused.

PBT and PB2 are refused on both sides. As a source: their trials change hyperparameters
mid-run (exploit, explore), so a trial's (config, result) is no observation of one
configuration. As the target: they pick and mutate configurations themselves and Ray runs
them with no searcher to warm-start (`PopulationBasedTraining` refuses one).

The folders read and how many trials each gave are kept (`Observations.record`) in the
experiment record (`warm_start` in raytune_ft.json); the report's summary names them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperopt import JOB_STATE_DONE, STATUS_OK
from ray.tune.search.hyperopt import HyperOptSearch

from raytune_ft.config import ExperimentConfig
from raytune_ft.config._search import domain_contains
from raytune_ft.errors import ConfigError, ExperimentError
from raytune_ft.tuning.schedulers import scheduler_spec

USABLE = ("terminated", "stopped")  # statuses whose last values a searcher would have seen


@dataclass
class Observations:
    """Earlier trials: their searched values and last reported metrics, in the same order."""

    points: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # the experiment folders read
    imported: list[int] = field(default_factory=list)  # trials taken from each source

    def record(self) -> list[dict]:
        """What the experiment record keeps: each folder and the trials it gave."""
        return [{"experiment": d, "trials": n} for d, n in zip(self.sources, self.imported)]

    def values(self, objectives: list[tuple[str, str]]) -> list[list[float]]:
        return [[row[metric] for metric, _ in objectives] for row in self.metrics]

    def rewards(self, index: int, objectives: list[tuple[str, str]]) -> list[float]:
        return [row[objectives[index][0]] for row in self.metrics]


def load_observations(config: ExperimentConfig, dirs: list[str]) -> Observations:
    """Every usable trial of the experiments in `dirs`, checked against `config`'s space."""
    if scheduler_spec(config.scheduler).population:
        raise ConfigError(f"--warm-start: scheduler.type {config.scheduler.type!r} picks and "
                          "mutates its own configurations, with no searcher to learn from "
                          "earlier trials; warm-start a run whose scheduler.type is fifo, "
                          "asha or hyperband")
    if config.search_alg.type not in ("optuna", "tpe"):
        raise ConfigError(f"--warm-start: search_alg.type {config.search_alg.type!r} learns "
                          "nothing from earlier trials; use optuna or tpe")
    from raytune_ft.storage import is_uri

    found = Observations()
    for directory in dirs:  # local folders recorded absolute: the record outlives the cwd
        directory = directory.rstrip("/")
        if not is_uri(directory):
            directory = str(Path(directory).expanduser().resolve())
        _add_experiment(found, config, directory)
    return found


def _searched(config: ExperimentConfig) -> dict:
    return {key: d for key, d in config.space().items() if d.kind != "constant"}


def _add_experiment(found: Observations, config: ExperimentConfig, directory: str) -> None:
    from raytune_ft.analysis import iterations_table, trials_table
    from raytune_ft.experiment import HP, read_record

    try:
        earlier, _ = read_record(directory)
    except ConfigError as error:
        raise ExperimentError(f"--warm-start {directory}: its experiment record no longer "
                              f"validates ({error})") from None
    if scheduler_spec(earlier.scheduler).population:
        raise ConfigError(f"--warm-start {directory}: its scheduler.type "
                          f"{earlier.scheduler.type!r} changed trials' hyperparameters "
                          "mid-run, so a trial's result belongs to no one configuration; "
                          "warm-start from runs whose scheduler.type is fifo, asha or "
                          "hyperband")
    space, before = _searched(config), _searched(earlier)
    for key in sorted({*space, *before}):
        if key not in before:
            raise ConfigError(f"--warm-start {directory}: search.{key} is searched now but "
                              "was not searched there; the spaces must search the same keys")
        if key not in space:
            raise ConfigError(f"--warm-start {directory}: search.{key} was searched there but "
                              "is not now; the spaces must search the same keys")
    trials, its = trials_table(directory), iterations_table(directory)
    objectives = config.objective_list()
    for metric, _ in objectives:
        if metric not in its.columns or its[metric].isna().all():
            raise ConfigError(f"--warm-start {directory}: objective {metric!r} was never "
                              "reported there")
    last = its.sort_values(["trial_id", "iteration"]).groupby("trial_id").last()
    before_count = len(found.points)
    for row in trials.to_dict("records"):  # not itertuples: it renames `hp_model.name`
        if row["status"] not in USABLE or row["trial_id"] not in last.index:
            continue
        values = {m: last.loc[row["trial_id"], m] for m, _ in objectives}
        if any(v is None or not math.isfinite(float(v)) for v in values.values()):
            continue
        point = {key: _plain(row[HP + key]) for key in space}
        for key, value in point.items():
            if not domain_contains(space[key], value):
                raise ConfigError(f"--warm-start {directory}: search.{key} differs: trial "
                                  f"{row['trial_id']} ran {key}={value!r}, outside "
                                  f"{space[key].kind} {list(space[key].args)}")
        found.points.append(point)
        found.metrics.append({m: float(v) for m, v in values.items()})
    found.sources.append(directory)
    found.imported.append(len(found.points) - before_count)


def _plain(value: Any) -> Any:
    """numpy and pandas scalars as the Python values a search domain holds."""
    if hasattr(value, "item"):
        value = value.item()
    return value


class WarmHyperOpt(HyperOptSearch):
    """`HyperOptSearch` that starts with `observed` (point, reward) pairs as completed
    hyperopt trials, so TPE's first suggestions already model them. A module-level class:
    Tune pickles the searcher with the experiment."""

    def __init__(self, *, observed: list[tuple[dict, float]] = (), **kwargs) -> None:
        self._observed = list(observed)
        super().__init__(**kwargs)

    def _setup_hyperopt(self) -> None:
        user = list(self._points_to_evaluate or [])
        observed, self._observed = self._observed, []
        if observed:  # Ray reverses the list: trials[j] is point n-1-j, users' first
            self._points_to_evaluate = [dict(p) for p, _ in observed] + user
        super()._setup_hyperopt()
        if not observed:
            return
        docs = self._hpopt_trials._dynamic_trials
        for j, (_, reward) in zip(range(len(user), len(docs)), reversed(observed)):
            docs[j]["state"] = JOB_STATE_DONE
            docs[j]["result"] = {"loss": self.metric_op * reward, "status": STATUS_OK}
        self._hpopt_trials.refresh()
        self._points_to_evaluate = len(user)

    @property
    def completed(self) -> list[dict]:
        """The hyperopt trials with a result (tests read what TPE learned from)."""
        return [t for t in self._hpopt_trials.trials if t["state"] == JOB_STATE_DONE]
