"""Warm start: the finished trials of earlier experiments, given to the searcher as
observations before it samples (`raytune-ft tune FILE --warm-start DIR [DIR ...]`).

An earlier experiment is compatible when its trials are observations of the same objective:
- every key searched now was searched there;
- every setting fixed on both sides (the data, any other section as a whole, the model and
  train settings with named batch schedules resolved and model names resolved to folders)
  agrees; one that differs refuses the whole folder. Where a run happens and how it is
  searched, scheduled and tracked (`NOT_COMPARED`), and what changes speed only
  (`NOT_MEASURED`; `train.max_micro_batch` unless BatchNorm trains per micro-batch on
  either side) is not compared;
- it had the same metric and mode (its trials were stopped and searched by them); any other
  objective need only have been reported there.
A trial is checked on its own where settings vary (a key searched there or now): its value
of a key searched now must be one the new domain can produce and mean the same once
resolved (batch phases, model folder); a key searched there and fixed now must have run
the value fixed now. A trial that fails that, or lacks a finite value of an objective, is
skipped and counted (`Observations.skipped`: the header and the record say how many and
why); a folder none of whose finished trials remain is refused in one line.

A trial counts when it ended normally (terminated, or stopped by a scheduler or a stop
rule); its values are its last reported ones, as a searcher is told at a trial's end.
Optuna adds them to its study as completed trials; hyperopt inserts them as evaluated
points; random and grid search learn nothing from them, so a warm start there is refused.

PBT and PB2 are refused on both sides. As a source: their trials change hyperparameters
mid-run (exploit, explore), so a trial's (config, result) is no observation of one
configuration. As the target: they pick and mutate configurations themselves and Ray runs
them with no searcher to warm-start (`PopulationBasedTraining` refuses one).

The folders read, how many trials each gave and how many it skipped (why) are kept
(`Observations.record`) in the experiment record (`warm_start` in raytune_ft.json); the
report's summary names them.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from hyperopt import JOB_STATE_DONE, STATUS_OK
from ray.tune.search.hyperopt import HyperOptSearch

from raytune_ft.config import domain_contains
from raytune_ft.errors import ConfigError, ExperimentError, ModelError
from raytune_ft.experiment import HP, read_record
from raytune_ft.schedulers import SCHEDULERS, scheduler_spec
from raytune_ft.schema import ExperimentConfig, trial_data, trial_hyperparameters, trial_model
from raytune_ft.tasks import canonical_dataset, task_for

USABLE = ("terminated", "stopped")  # statuses whose last values a searcher would have seen
# Sections that change no trial's result: where it runs, how it is searched, scheduled and
# tracked. Every other setting must agree between an earlier experiment and this one.
NOT_COMPARED = ("name", "run", "resources", "tracking", "search_alg", "scheduler")
# Compared another way: the space (`search`), per trial (`model`, `train` with the named
# `batch_schedules` resolved), as objectives (`metric`, `mode`, `objectives`).
COMPARED_APART = ("search", "model", "train", "batch_schedules", "metric", "mode", "objectives")
# A limit that refuses data rather than changing it; paths compared once resolved.
NOT_COMPUTED = ("data.max_object_store_mb",)
# Train settings that change no trial's objective (`_ignored`; max_micro_batch there too).
NOT_MEASURED = ("train.seed", "train.eval_batch_size", "train.precision")
PATH_KEYS = ("data.path", "data.train_file", "data.eval_file", "model.name")


@dataclass
class Observations:
    """Earlier trials: their searched values and last reported metrics, in the same order."""

    points: list[dict[str, Any]] = field(default_factory=list)
    metrics: list[dict[str, float]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # the experiment folders read
    imported: list[int] = field(default_factory=list)  # trials taken from each source
    skipped: list[dict[str, int]] = field(default_factory=list)  # per source: why -> trials

    def record(self) -> list[dict]:
        """What the experiment record keeps: each folder, the trials it gave, and how many of
        its finished trials were left out, by reason (`{"ran train.freeze_layers != 0": 2}`)."""
        return [{"experiment": d, "trials": n, "skipped": sum(why.values()), "why": why}
                for d, n, why in zip(self.sources, self.imported, self.skipped)]

    def skip_text(self, index: int | None = None) -> str:
        """Why trials were left out (all sources, or source `index`); '' when none were."""
        whys = self.skipped if index is None else [self.skipped[index]]
        return _skip_text(sum((Counter(why) for why in whys), Counter()))

    def values(self, objectives: list[tuple[str, str]]) -> list[list[float]]:
        return [[row[metric] for metric, _ in objectives] for row in self.metrics]

    def rewards(self, index: int, objectives: list[tuple[str, str]]) -> list[float]:
        return [row[objectives[index][0]] for row in self.metrics]


def load_observations(config: ExperimentConfig, dirs: list[str]) -> Observations:
    """Every usable trial of the experiments in `dirs`, checked against `config`'s space."""
    if scheduler_spec(config.scheduler).population:
        raise ConfigError(f"--warm-start: scheduler.type {config.scheduler.type!r} picks and "
                          "mutates its own configurations, with no searcher to learn from "
                          "earlier trials; warm-start a run whose scheduler.type is "
                          f"{fixed_config_schedulers()}")
    if config.search_alg.type not in ("optuna", "tpe"):
        raise ConfigError(f"--warm-start: search_alg.type {config.search_alg.type!r} learns "
                          "nothing from earlier trials; use optuna or tpe")
    from raytune_ft.storage import absolute

    found = Observations()
    for directory in dirs:  # local folders recorded absolute: the record outlives the cwd
        _add_experiment(found, config, absolute(directory.rstrip("/")))
    return found


def _searched(config: ExperimentConfig) -> dict:
    return {key: d for key, d in config.space().items() if d.kind != "constant"}


def _add_experiment(found: Observations, config: ExperimentConfig, directory: str) -> None:
    from raytune_ft.analysis import iterations_table, trials_table

    try:
        earlier, record = read_record(directory)
    except ConfigError as error:
        raise ExperimentError(f"--warm-start {directory}: its experiment record no longer "
                              f"validates ({error})") from None
    if scheduler_spec(earlier.scheduler).population:
        raise ConfigError(f"--warm-start {directory}: its scheduler.type "
                          f"{earlier.scheduler.type!r} changed trials' hyperparameters "
                          "mid-run, so a trial's result belongs to no one configuration; "
                          "warm-start from runs whose scheduler.type is "
                          f"{fixed_config_schedulers()}")
    space, before = _searched(config), _searched(earlier)
    for key in sorted(space):  # one searched there and fixed now: compared per trial below
        if key not in before:
            raise ConfigError(f"--warm-start {directory}: search.{key} is searched now but "
                              "was not searched there; the spaces must search the same keys")
    _check_objectives(config, earlier, directory)
    _check_sections(config, earlier, directory)
    varied = _check_fixed(config, earlier, record, {*before, *space}, directory)
    trials, its = trials_table(directory), iterations_table(directory)
    objectives = config.objective_list()
    for metric, _ in objectives:
        if metric not in its.columns or its[metric].isna().all():
            raise ConfigError(f"--warm-start {directory}: objective {metric!r} was never "
                              "reported there")
    last = its.sort_values(["trial_id", "iteration"]).groupby("trial_id").last()
    finished, skipped = 0, Counter()
    for row in trials.to_dict("records"):  # not itertuples: it renames `hp_model.name`
        if row["status"] not in USABLE or row["trial_id"] not in last.index:
            continue
        finished += 1
        values = {m: last.loc[row["trial_id"], m] for m, _ in objectives}
        ran = _sampled(earlier, row)
        point = {key: ran[key] for key in space}
        why = _unfinite(values) or _mismatch(config, earlier, record, space, varied, ran, point)
        if why:
            skipped[why] += 1
            continue
        found.points.append(point)
        found.metrics.append({m: float(v) for m, v in values.items()})
    if finished and sum(skipped.values()) == finished:
        raise ConfigError(f"--warm-start {directory}: none of its {finished} finished trials "
                          f"ran with the settings now: {_skip_text(skipped)}")
    found.sources.append(directory)
    found.imported.append(finished - sum(skipped.values()))
    found.skipped.append(dict(skipped))


def _check_fixed(config: ExperimentConfig, earlier: ExperimentConfig, record: dict,
                 searched: set[str], directory: str) -> set[str]:
    """Every model and train setting fixed on both sides agrees (else the whole folder is
    refused); returns the settings that vary by trial (a key searched there or now)."""
    fixed_now = _trial_settings(config, _constants(config))
    fixed_there = _trial_settings(earlier, _constants(earlier))
    varied = {key for key in fixed_now if _searched_key(key) in searched}
    for key, now in fixed_now.items():
        if key in varied or _ignored(key, fixed_now, fixed_there):
            continue
        if not _same(key, now, fixed_there[key], record):
            raise ConfigError(f"--warm-start {directory}: {key} differs: {now!r} now, "
                              f"{fixed_there[key]!r} there; a warm start takes trials run "
                              "with the settings fixed now")
    return varied


def _unfinite(values: dict[str, Any]) -> str | None:
    """Why a trial's last results cannot be an observation: an objective without a value."""
    for metric, value in values.items():
        if value is None or not math.isfinite(float(value)):
            return f"reported no finite {metric}"
    return None


def _mismatch(config: ExperimentConfig, earlier: ExperimentConfig, record: dict,
              space: dict, varied: set[str], ran: dict[str, Any], point: dict[str, Any]
              ) -> str | None:
    """Why one earlier trial is no observation of the space now (None: it is): a searched
    value outside the domain now, or a setting it computed with (resolved: batch phases,
    model folder) that the same point, or the value fixed now, does not give."""
    for key, value in point.items():
        if not domain_contains(space[key], value):
            return f"ran {key} outside {space[key].kind} {list(space[key].args)}"
    now = _trial_settings(config, {**_constants(config), **point})
    there = _trial_settings(earlier, ran)
    for key in sorted(varied):
        if _ignored(key, now, there) or _same(key, now[key], there[key], record):
            continue
        if _searched_key(key) not in space:
            return f"ran {key} != {now[key]!r}"
        return (f"ran {key} {point[_searched_key(key)]!r}: {_shown(key, now[key], {})!r} now, "
                f"{_shown(key, there[key], record)!r} there")
    return None


def _skip_text(skipped: dict[str, int]) -> str:
    """`2 ran train.freeze_layers != 0; 1 reported no finite latency_ms_b1`: trials left."""
    return "; ".join(f"{n} {why}" for why, n in sorted(skipped.items()))


def _ignored(key: str, now: dict[str, Any], there: dict[str, Any]) -> bool:
    """Settings that change no trial's objective: another seed is another draw of it, the
    eval batch and precision change speed only, and the micro-batch leaves the effective
    batch alone unless BatchNorm computes statistics per micro-batch on either side."""
    if key in NOT_MEASURED:
        return True
    return key == "train.max_micro_batch" and "train" not in (
        now["train.batchnorm"], there["train.batchnorm"])


def _check_objectives(config: ExperimentConfig, earlier: ExperimentConfig,
                      directory: str) -> None:
    """The same metric and mode: schedulers stopped its trials by them and the searcher there
    followed them, so a stopped trial's last value means the same. Other objectives need
    only have been reported there (checked with its results)."""
    if (config.metric, config.mode) != (earlier.metric, earlier.mode):
        raise ConfigError(f"--warm-start {directory}: metric differs: {config.metric!r} "
                          f"({config.mode}) now, {earlier.metric!r} ({earlier.mode}) there; its "
                          "trials were stopped and ranked by its metric, so a warm start needs "
                          "the same one")


def _check_sections(config: ExperimentConfig, earlier: ExperimentConfig,
                    directory: str) -> None:
    """Every section compared as a whole (the data, and any section added later) agrees."""
    skip = (*NOT_COMPARED, *COMPARED_APART)
    per_trial = {f"data.{k}" for k in _encoding_fields(config)}  # with model and train
    for section in type(config).model_fields:
        if section in skip:
            continue
        now, there = _dotted(config, section), _dotted(earlier, section)
        for key in sorted({*now, *there}):
            if key in NOT_COMPUTED or key in per_trial or _same(key, now.get(key),
                                                                there.get(key), {}):
                continue
            raise ConfigError(f"--warm-start {directory}: {key} differs: {now.get(key)!r} "
                              f"now, {there.get(key)!r} there; a warm start takes trials of "
                              "the same data and settings")


def _dotted(config: ExperimentConfig, section: str) -> dict[str, Any]:
    """`section`'s settings as dotted keys, the data's task and kind as the tasks read them."""
    value = getattr(config, section)
    if section == "data":  # only some tasks read a named dataset (`task`)
        dataset = getattr(value, "task", None)
        value = {**value.model_dump(), "kind": task_for(value).name,
                 **({"task": canonical_dataset(dataset)} if dataset else {})}
    elif hasattr(value, "model_dump"):
        value = value.model_dump()
    if not isinstance(value, dict):
        return {section: value}
    return {f"{section}.{key}": item for key, item in value.items()}


def _constants(config: ExperimentConfig) -> dict[str, Any]:
    """The constants written under `search:`: fixed settings, as every trial gets them."""
    return {key: d.args[0] for key, d in config.space().items() if d.kind == "constant"}


def _sampled(earlier: ExperimentConfig, row: dict) -> dict[str, Any]:
    """The config an earlier trial ran with (its searched keys) from its trials-table row."""
    sampled = {}
    for key, domain in earlier.space().items():
        value = domain.args[0] if domain.kind == "constant" else _plain(row.get(HP + key))
        if isinstance(value, str) and any(isinstance(v, list) for v in domain.values):
            value = json.loads(value)  # a list (batch phases): JSON text in the table
        sampled[key] = value
    return sampled


def _trial_settings(config: ExperimentConfig, sampled: dict[str, Any]) -> dict[str, Any]:
    """What one trial computes with: its model and train settings and the data settings its
    encoding depends on (searchable, so they may vary by trial), as dotted keys (named
    batch schedules resolved to their phases)."""
    model, train = trial_model(config, sampled), trial_hyperparameters(config, sampled)
    data = trial_data(config, sampled)
    return {**{f"model.{k}": v for k, v in model.model_dump().items()},
            **{f"data.{k}": getattr(data, k) for k in _encoding_fields(config)},
            **{f"train.{k}": v for k, v in train.model_dump().items()}}


def _encoding_fields(config: ExperimentConfig) -> tuple[str, ...]:
    """The data fields compared per trial rather than with the data section."""
    return task_for(config.data).tokenization_fields


def _searched_key(key: str) -> str:
    """The `search:` key of a dotted setting: train.learning_rate -> learning_rate."""
    return key.removeprefix("train.")


def _same(key: str, now: Any, there: Any, record: dict) -> bool:
    """Equal, or (paths and model names) the same file once resolved: a relative path, the
    earlier run's resolved model path (its record) and the packaged MiniLM's aliases."""
    if key not in PATH_KEYS or not (isinstance(now, str) and isinstance(there, str)):
        return now == there
    resolved = _resolved(key, now, {})
    if now == there and resolved in (None, now):  # a hub id: the same name, the same model
        return True
    return resolved == _resolved(key, there, record)


def _shown(key: str, value: Any, record: dict) -> Any:
    """A setting as compared: a path or model name resolved, anything else as it is."""
    if key in PATH_KEYS and isinstance(value, str):
        return _resolved(key, value, record) or value
    return value


def _resolved(key: str, value: str, record: dict) -> str | None:
    from raytune_ft.storage import absolute
    from raytune_ft.training.model import resolve_model_path

    if key == "model.name":  # the earlier run's paths as its record kept them
        known = record.get("model_paths") or (
            {record["model"]["name"]: record["model_path"]} if record.get("model_path") else {})
        if value in known:
            return known[value]
        try:
            return resolve_model_path(value)
        except ModelError:
            return None
    return absolute(value)


def _plain(value: Any) -> Any:
    """numpy and pandas scalars as the Python values a search domain holds."""
    if hasattr(value, "item"):
        value = value.item()
    return value


class WarmHyperOpt(HyperOptSearch):
    """`HyperOptSearch` that starts with `observed` (point, reward) pairs as completed
    hyperopt trials, so TPE's first suggestions already model them, and learns an errored
    trial that `resume` restarted and finished. A module-level class: Tune pickles the
    searcher with the experiment."""

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

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """`run.max_concurrent_trials`, kept here rather than by Tune's `ConcurrencyLimiter`,
        which drops the completion of a trial it no longer counts as live: an errored trial
        that `resume` restarted would finish unseen by TPE (as with Optuna)."""
        self._max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str):
        limit = getattr(self, "_max_concurrent", 0)  # a searcher saved before had none
        if limit and len(self._live_trial_mapping) >= limit:
            return None  # Tune asks again once a trial completes
        return super().suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        """An errored trial that `resume` restarted from its checkpoint and that finishes
        after all: its hyperopt trial, held as an error, is done with the result (Ray's
        method forgot the trial at its error and would drop the result)."""
        errored = self.__dict__.setdefault("_errored", {})  # Tune trial id -> hyperopt tid
        if trial_id in errored and trial_id not in self._live_trial_mapping:
            tid = errored.pop(trial_id)
            if result and not error and self.metric in result:
                doc = next(d for d in self._hpopt_trials._dynamic_trials if d["tid"] == tid)
                doc.update(state=JOB_STATE_DONE, result=self._to_hyperopt_result(result))
                self._hpopt_trials.refresh()
            else:
                errored[trial_id] = tid  # failed again: a later resume may finish it
            return
        if error and trial_id in self._live_trial_mapping:
            errored[trial_id] = self._live_trial_mapping[trial_id][0]
        super().on_trial_complete(trial_id, result, error)

    @property
    def completed(self) -> list[dict]:
        """The hyperopt trials with a result (tests read what TPE learned from)."""
        return [t for t in self._hpopt_trials.trials if t["state"] == JOB_STATE_DONE]


def fixed_config_schedulers() -> str:
    """"fifo, asha or hyperband": the schedulers whose trials keep one configuration."""
    names = [name for name, spec in SCHEDULERS.items() if not spec.population]
    return f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
