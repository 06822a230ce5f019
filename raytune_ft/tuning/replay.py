"""Re-run one PBT trial's schedule of hyperparameters from scratch, as one trial.

PBT's winner is a schedule, not a configuration: it started from one config and was changed
at exploits. The trial's policy file (`pbt_policy_<trial_id>.txt`, written by Ray's PBT) is
replayed by `MultiScheduleReplay`: the same changes at the same iterations, so a user can
reproduce the winner without the population. Each part of the schedule trains with the
dropout masks of the trial that trained it (under PBT they follow the trial's index), so the
replay of a trial reports that trial's figures to the last digit on the same device.
"""

from __future__ import annotations

import logging
from pathlib import Path

from raytune_ft.config import ExperimentConfig, narrow_model_search
from raytune_ft.errors import ExperimentError
from raytune_ft.experiment import (
    rank_trials,
    read_experiment_record,
)
from raytune_ft.tuning.runner import prepare, run_presets
from raytune_ft.tuning.schedulers import scheduler_spec
from raytune_ft.tuning.summary import RunSummary

log = logging.getLogger(__name__)


def best_trial(trials, config: ExperimentConfig) -> str:
    """The best trial by the experiment folder's ranking rule (PBT: by the last metric, the
    final population); errored and diverged trials never win."""
    ranked = rank_trials(trials, config)
    if ranked.empty:
        raise ExperimentError(f"no trial has reported {config.metric} without failing or "
                              "diverging")
    return str(ranked.iloc[0]["trial_id"])


def replay_trial(experiment_dir: str, trial_id: str | None = None,
                 address: str | None = None) -> tuple[RunSummary, str]:
    """Replay `trial_id` (default: the best) of a PBT experiment; returns (summary, trial)."""
    from raytune_ft.analysis import trials_table
    from raytune_ft.tuning.confirm import source_schedule
    from raytune_ft.tuning.pbt_replay import SCHEDULE_KEY, MultiScheduleReplay

    directory = Path(experiment_dir).expanduser().resolve()
    config = read_experiment_record(str(directory))
    if not scheduler_spec(config.scheduler).population:
        raise ExperimentError(f"{directory}: scheduler.type is {config.scheduler.type!r}; "
                              "replay needs a PBT or PB2 experiment")
    table = trials_table(directory)
    trial_id = trial_id or best_trial(table, config)
    trials = table.set_index("trial_id", drop=False)
    if trial_id not in trials.index:
        raise ExperimentError(f"--trial: {trial_id!r} is not a trial of {directory} (trials: "
                              f"{', '.join(sorted(trials.index))})")
    # changed by exploits: its policy file; never exploited: its initial config
    schedule = source_schedule(directory, trials.loc[trial_id], pbt=True)
    name = f"{config.name}-replay-{trial_id}"
    config = config.model_copy(update={"name": name, "run": config.run.model_copy(
        update={"num_samples": 1})})
    config = narrow_model_search(  # its model and length only: one tokenization
        config, [schedule.initial, *(c for _, c in schedule.changes)])
    prepared = prepare(config, overwrite=True, address=address)
    # Ray's PopulationBasedTrainingReplay pauses while its own checkpoint save is in flight,
    # which ends the resumed trial early (Ray 2.60); MultiScheduleReplay pauses through Tune.
    schedule = _seeded_as_trained(schedule, trial_id, list(trials.index))
    point = {**schedule.initial, SCHEDULE_KEY: 1}
    scheduler = MultiScheduleReplay({1: schedule}, (SCHEDULE_KEY,))
    outcome = run_presets(prepared, [point], scheduler, address)  # an earlier replay goes
    return outcome.summary(), trial_id


def _seeded_as_trained(schedule, trial_id: str, trial_ids: list[str]):
    """`schedule` with each part's DROPOUT_TRIAL_KEY: the id of the trial that trained it
    (from the policy's experiment tags, whose leading number is the trial's index; a trial
    never exploited trained all of it itself)."""
    from raytune_ft.tuning.pbt_replay import DROPOUT_TRIAL_KEY, Schedule

    by_index = {int(i.rsplit("_", 1)[1]): i for i in trial_ids
                if "_" in i and i.rsplit("_", 1)[1].isdigit()}
    prefix = trial_id.rsplit("_", 1)[0]
    ids = [trial_id]
    if schedule.trainers:
        indices = [tag.split("_", 1)[0] for tag in schedule.trainers]
        ids = [by_index.get(int(n), f"{prefix}_{int(n):05d}") if n.isdigit() else trial_id
               for n in indices]
    changes = tuple((step, {**config, DROPOUT_TRIAL_KEY: seeded})
                    for (step, config), seeded in zip(schedule.changes, ids[1:], strict=True))
    return Schedule({**schedule.initial, DROPOUT_TRIAL_KEY: ids[0]}, changes,
                    schedule.trainers)
