"""Re-run one PBT trial's schedule of hyperparameters from scratch, as one trial.

PBT's winner is a schedule, not a configuration: it started from one config and was changed
at exploits. The trial's policy file (`pbt_policy_<trial_id>.txt`, written by Ray's PBT) is
replayed by `MultiScheduleReplay`: the same changes at the same iterations, so a user can
reproduce the winner without the population.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from raytune_ft.errors import ExperimentError
from raytune_ft.tuning.runner import (
    Outcome,
    begin_run,
    fit_tuner,
    prepare,
    read_experiment_record,
    trainable_for,
    tune_settings,
)
from raytune_ft.tuning.schedulers import scheduler_spec

log = logging.getLogger(__name__)


def best_trial(trials, metric: str, mode: str) -> str:
    """The trial whose last reported metric is best: PBT's final population ranks so."""
    reported = trials.dropna(subset=["last_metric"])
    if reported.empty:
        raise ExperimentError(f"no trial has reported {metric}")
    order = reported.sort_values("last_metric", ascending=mode == "min")
    return str(order.iloc[0]["trial_id"])


def replay_trial(experiment_dir: str, trial_id: str | None = None,
                 address: str | None = None) -> tuple[Outcome, str]:
    """Replay `trial_id` (default: the best) of a PBT experiment; returns (outcome, trial)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from raytune_ft.analysis import trials_table
    from raytune_ft.tuning.pbt_replay import (
        SCHEDULE_KEY,
        MultiScheduleReplay,
        Schedule,
        load_policy,
    )

    directory = Path(experiment_dir).expanduser().resolve()
    config = read_experiment_record(str(directory))
    if not scheduler_spec(config.scheduler).population:
        raise ExperimentError(f"{directory}: scheduler.type is {config.scheduler.type!r}; "
                              "replay needs a PBT or PB2 experiment")
    trials = trials_table(directory).set_index("trial_id", drop=False)
    trial_id = trial_id or best_trial(trials, config.metric, config.mode)
    if trial_id not in trials.index:
        raise ExperimentError(f"--trial: {trial_id!r} is not a trial of {directory} (trials: "
                              f"{', '.join(sorted(trials.index))})")
    policy = directory / f"pbt_policy_{trial_id}.txt"
    if policy.is_file():  # the trial was changed by exploits: replay its schedule
        schedule = load_policy(policy)
    else:  # never exploited: its schedule is its initial config
        params = directory / trials.loc[trial_id, "trial_dir"] / "params.json"
        schedule = Schedule(json.loads(params.read_text()))
    name = f"{config.name}-replay-{trial_id}"
    config = config.model_copy(update={"name": name, "run": config.run.model_copy(
        update={"num_samples": 1})})
    prepared = prepare(config, overwrite=True, address=address)
    begin_run(prepared, address, replace=True)  # an earlier replay of this trial goes
    tune_config, run_config = tune_settings(config, prepared.experiment_dir)
    # Ray's PopulationBasedTrainingReplay pauses while its own checkpoint save is in flight,
    # which ends the resumed trial early (Ray 2.60); MultiScheduleReplay pauses through Tune.
    point = {**schedule.initial, SCHEDULE_KEY: 1}
    tune_config = dataclasses.replace(
        tune_config, scheduler=MultiScheduleReplay({1: schedule}, (SCHEDULE_KEY,)),
        num_samples=1, search_alg=BasicVariantGenerator(points_to_evaluate=[point]))
    tuner = tune.Tuner(trainable_for(prepared), param_space={key: None for key in point},
                       tune_config=tune_config, run_config=run_config)
    results, interrupted = fit_tuner(tuner)
    return Outcome(results, prepared, interrupted), trial_id
