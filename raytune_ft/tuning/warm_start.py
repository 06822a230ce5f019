"""Warm start: the finished trials of earlier experiments, given to the searcher as
observations before it samples (`raytune-ft tune FILE --warm-start DIR [DIR ...]`).

An earlier experiment is compatible when it searched the same keys and every value its
trials ran with is one the new domain can produce; anything else is refused naming the
parameter. A trial counts when it ended normally (terminated, or stopped by a scheduler or
a stop rule) and reported every objective; its values are its last reported ones, as a
searcher is told at a trial's end. Optuna adds them to its study as completed trials;
hyperopt inserts them as evaluated points; random and grid search learn nothing from them,
so a warm start there is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hyperopt import JOB_STATE_DONE, STATUS_OK
from ray.tune.search.hyperopt import HyperOptSearch

from raytune_ft.config import ExperimentConfig
from raytune_ft.config._search import domain_contains
from raytune_ft.errors import ConfigError, ExperimentError

USABLE = ("terminated", "stopped")  # statuses whose last values a searcher would have seen


@dataclass
class Observations:
    """Earlier trials: their searched values and last reported metrics, in the same order."""

    points: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # the experiment folders read

    def values(self, objectives: list[tuple[str, str]]) -> list[list[float]]:
        return [[row[metric] for metric, _ in objectives] for row in self.metrics]

    def rewards(self, index: int, objectives: list[tuple[str, str]]) -> list[float]:
        return [row[objectives[index][0]] for row in self.metrics]


def load_observations(config: ExperimentConfig, dirs: list[str]) -> Observations:
    """Every usable trial of the experiments in `dirs`, checked against `config`'s space."""
    if config.search_alg.type not in ("optuna", "tpe"):
        raise ConfigError(f"--warm-start: search_alg.type {config.search_alg.type!r} learns "
                          "nothing from earlier trials; use optuna or tpe")
    found = Observations()
    for directory in dirs:
        _add_experiment(found, config, directory.rstrip("/"))
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
