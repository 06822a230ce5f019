"""Replay several PBT schedules in one Ray Tune run: a different policy per trial.

Ray's `PopulationBasedTrainingReplay` replays one policy file and accepts one trial. `confirm`
re-trains the K best PBT schedules with N seeds each, as one run on one cluster, so this
scheduler holds one schedule per key and gives every trial the schedule its config names
(`config[SCHEDULE_KEY]`). Per trial it does what Ray's replay does: start from the schedule's
initial config and, once the trial reaches a change point, set the next config and pause the
trial (Tune saves its checkpoint first); it resumes from that checkpoint with the new config.
Keys in `fixed` of a trial's first config (its seed, the schedule key) survive every change.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from ray.air.constants import TRAINING_ITERATION
from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from raytune_ft.errors import ExperimentError

log = logging.getLogger(__name__)
SCHEDULE_KEY = "confirm_rank"  # the trial config key that names its schedule
# A replayed segment's dropout masks are those of the trial that trained it: the trial id
# the trainable seeds dropout from instead of its own (tuning/trainable.trial_dropout_seed).
DROPOUT_TRIAL_KEY = "dropout_trial"


@dataclass(frozen=True)
class Schedule:
    """A PBT trial's schedule: the config it started from and (iteration, config) changes;
    `trainers`: the experiment tags of the trials that trained each part (the first until the
    first change, ...; empty when unknown)."""

    initial: dict
    changes: tuple[tuple[int, dict], ...] = ()
    trainers: tuple[str, ...] = ()


def load_policy(path: str | Path) -> Schedule:
    """Read `pbt_policy_<trial>.txt` exactly as Ray's `PopulationBasedTrainingReplay` does.

    Each line is `[old_tag, new_tag, old_step, new_step, old_config, new_config]`. Walking back
    from the last exploit, the chain of tags ends where a later exploit overwrote the earlier
    ones; the schedule starts from the config of the chain's first donor.
    """
    path = Path(path)
    raw = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            old_tag, new_tag, _old_step, new_step, old_conf, new_conf = row
        except (json.JSONDecodeError, ValueError, TypeError):
            raise ExperimentError(f"{path}: line {number} is not a PBT policy entry "
                                  "[old_tag, new_tag, old_step, new_step, old_config, "
                                  "new_config]") from None
        raw.append((old_tag, new_tag, int(new_step), old_conf, new_conf))
    if not raw:
        raise ExperimentError(f"{path}: empty PBT policy file")
    changes, trainers, last_new_tag, initial = [], [], None, None
    for old_tag, new_tag, new_step, old_conf, new_conf in reversed(raw):
        if last_new_tag and old_tag != last_new_tag:
            break  # earlier changes were overwritten by the exploit after them
        last_new_tag, initial = new_tag, old_conf
        changes.append((new_step, new_conf))
        trainers.append(str(old_tag))  # the clone trained on from the change
    trainers.append(str(last_new_tag))  # the first donor trained up to the first change
    return Schedule(initial, tuple(reversed(changes)), tuple(reversed(trainers)))


@dataclass
class _TrialReplay:
    changes: list[tuple[int, dict]]
    fixed: dict
    applied: int = 0
    history: list[tuple[int, dict]] = field(default_factory=list)


class MultiScheduleReplay(FIFOScheduler):
    """FIFO order; each trial follows the schedule named by `config[SCHEDULE_KEY]`.

    `fixed_keys`: config keys of a trial's first config kept through every change (its seed,
    the schedule key and anything else that identifies the trial rather than the schedule).
    """

    def __init__(self, schedules: dict[int, Schedule], fixed_keys: tuple[str, ...]) -> None:
        super().__init__()
        if SCHEDULE_KEY not in fixed_keys:
            raise ValueError(f"fixed_keys is {fixed_keys!r}, but must include {SCHEDULE_KEY!r}")
        self._schedules = dict(schedules)
        self._fixed_keys = tuple(fixed_keys)
        self._trials: dict[str, _TrialReplay] = {}

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        key = trial.config.get(SCHEDULE_KEY)
        if key not in self._schedules:
            raise ValueError(f"trial {trial.trial_id}: config[{SCHEDULE_KEY!r}] is {key!r}; "
                             f"schedules: {sorted(self._schedules)}")
        if trial.trial_id in self._trials:  # a restored experiment re-adds its trials
            return
        schedule = self._schedules[key]
        fixed = {k: trial.config[k] for k in self._fixed_keys if k in trial.config}
        trial.set_config({**schedule.initial, **fixed})
        self._trials[trial.trial_id] = _TrialReplay(list(schedule.changes), fixed)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        replay = self._trials.get(trial.trial_id)
        if replay is None or TRAINING_ITERATION not in result or result.get("done"):
            return TrialScheduler.CONTINUE
        if replay.applied >= len(replay.changes):
            return TrialScheduler.CONTINUE
        step = result[TRAINING_ITERATION]
        change_at, new_config = replay.changes[replay.applied]
        if step < change_at:
            return TrialScheduler.CONTINUE
        config = {**new_config, **replay.fixed}
        log.info("trial %s at iteration %d: replaying change %d of %d, config %s",
                 trial.trial_id, step, replay.applied + 1, len(replay.changes), config)
        # PAUSE makes Tune save this iteration's checkpoint, then stop the trial; it resumes
        # from that checkpoint with the new config. Ray's replay schedules the save itself and
        # pauses while it is in flight, which leaves a cached STOP that ends the resumed trial
        # at its next checkpoint (Ray 2.60, function trainables).
        trial.set_experiment_tag(f"{trial.experiment_tag}_r{replay.applied + 1}@{step}")
        trial.set_config(config)
        replay.history.append((step, config))
        replay.applied += 1
        return TrialScheduler.PAUSE

    def debug_string(self) -> str:
        done = sum(r.applied for r in self._trials.values())
        total = sum(len(r.changes) for r in self._trials.values())
        return f"MultiScheduleReplay: {len(self._schedules)} schedules, {done}/{total} changes"
