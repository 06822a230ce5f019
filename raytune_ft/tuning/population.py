"""PBT and PB2 as raytune_ft runs them: Ray's schedulers with a deterministic rescue of
diverged members and an exploit log that names the iteration each exploit was decided on.

**Rescue.** A trial whose result says `diverged` (training/loop.py: a non-finite loss or
gradient; it reports the worst finite values) is paused at once and cloned from the best
healthy trial: the one whose newest checkpoint scores best, finished trials included, its
config explored as in any exploit. The newest checkpoint before the last iteration (`max_t`):
a clone of a finished trial's final one would have nothing left to train or report. A clone
needs a checkpoint, so with none yet the diverged trial waits, paused, and is cloned at the
first healthy result that brings one. Ray's
asynchronous PBT instead ranked a diverged trial only against the trials that happened to
have reported, and a member that was never in the lower quantile at the right moment idled
to its budget unrescued: whether it was rescued depended on the order results arrived.
A waiting trial is not ranked and cannot be a donor. When no other trial is left that could
bring a healthy checkpoint, the waiting ones end as they are (diverged). Synchronous PBT
(`synch: true`) ranks every member at each perturbation point anyway: there a diverged
member reports its worst values and is exploited in that round, as in Ray.

**Exploit log.** Ray 2.60 writes `pbt_global.txt` and the `pbt_policy_*.txt` files with the
trials' `last_result`, which Tune updates only after the scheduler has decided: the target's
iteration is that of its previous report (after an exploit, of its report before the
restore), and the donor's that of its newest report rather than of the checkpoint cloned. Here
both are the iterations of the results the decision used: the target's deciding result and
the donor's checkpointed one. `analysis` (pbt_events) and `replay` read them so.
"""

from __future__ import annotations

import copy
import logging
import math

from ray.train._internal.checkpoint_manager import _TrainingResult
from ray.tune.experiment import Trial
from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler
from ray.tune.schedulers.pbt import _make_experiment_tag

log = logging.getLogger(__name__)
DIVERGED = "diverged"  # the flag every result carries (training/loop.py)
_QUEUED = (Trial.PENDING, Trial.PAUSED)


class _AtResult:
    """`trial` as the scheduler saw it when it decided: `last_result` is `result`."""

    def __init__(self, trial: Trial, result: dict) -> None:
        self._trial, self.last_result = trial, result

    def __getattr__(self, name: str):
        return getattr(self._trial, name)


class RescuePopulation:
    """The rescue and the exploit log above, for PBT and PB2 (mixed in before Ray's class).

    `max_t`: the iterations a trial runs (the plan's). Its state is the set of waiting trial
    ids: Tune pickles the scheduler with the experiment.
    """

    def __init__(self, *args, max_t: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._max_t = max_t
        self._waiting: set[str] = set()

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        if (not self._synch and result.get(DIVERGED) and self._metric in result
                and self._time_attr in result):
            self._hold(tune_controller, trial, result)
            self._rescue(tune_controller)
            return TrialScheduler.NOOP
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.PAUSE and self._waiting and not any(
                t is not trial and t.status in _QUEUED and t.trial_id not in self._waiting
                for t in tune_controller.get_trials()):
            # Ray pauses a trial to let a queued one run; a waiting trial does not run
            return TrialScheduler.CONTINUE
        return decision

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        if self._waiting:  # a healthy checkpoint may have come since
            self._rescue(tune_controller)
        if not self._waiting:
            return super().choose_trial_to_run(tune_controller)
        queued = [t for t in tune_controller.get_trials()
                  if t.status in _QUEUED and t.trial_id not in self._waiting]
        return min(queued, key=lambda t: self._trial_state[t].last_train_time, default=None)

    def _log_config_on_step(self, trial_state, new_state, trial, trial_to_clone, new_config):
        self._log_exploit(trial_state, new_state, trial, trial_to_clone, new_config,
                          new_state.last_result)

    # ------------------------------------------------------------------ the rescue

    def _hold(self, tune_controller, trial: Trial, result: dict) -> None:
        """Pause a diverged trial until it can clone a healthy one (no checkpoint is saved:
        its weights are not finite). It is not ranked meanwhile."""
        state = self._trial_state[trial]
        state.last_score = None  # out of the quantiles: neither a donor nor a slot below
        state.last_checkpoint = None
        state.last_result = result
        state.last_train_time = result[self._time_attr]
        self._waiting.add(trial.trial_id)
        log.info("trial %s diverged at %s %s: paused until it clones a healthy trial",
                 trial.trial_id, self._time_attr, result[self._time_attr])
        tune_controller.pause_trial(trial, should_checkpoint=False)

    def _rescue(self, tune_controller) -> None:
        """Clone the best healthy trial into every waiting one; end them when no trial is
        left that could still bring a healthy checkpoint."""
        trials = list(tune_controller.get_trials())
        donor, saved = self._best_healthy(trials)
        for trial in trials:
            if trial.trial_id not in self._waiting:
                continue
            if trial.status != Trial.PAUSED:  # stopped or failed meanwhile
                self._waiting.discard(trial.trial_id)
            elif donor is not None:
                self._clone(trial, donor, saved)
                self._waiting.discard(trial.trial_id)
        hope = any(t.status in (Trial.RUNNING, *_QUEUED) and t.trial_id not in self._waiting
                   for t in trials)
        if self._waiting and not hope:
            for trial in trials:
                if trial.trial_id in self._waiting:
                    log.warning("trial %s diverged and no healthy trial is left to clone: it "
                                "ends diverged", trial.trial_id)
                    self._waiting.discard(trial.trial_id)
                    tune_controller.stop_trial(trial)

    def _best_healthy(self, trials: list[Trial]) -> tuple[Trial | None, _TrainingResult | None]:
        """The trial whose newest checkpoint before `max_t` scores best among those whose
        last result is healthy (finished ones included), with that checkpoint's result."""
        best = (None, None, -math.inf)
        for trial in trials:
            last = trial.run_metadata.last_result  # (Trial.last_result may block on Ray)
            if trial.trial_id in self._waiting or trial.status == Trial.ERROR or \
                    last.get(DIVERGED) is not False:
                continue
            saved = self._newest_to_clone(trial)
            value = saved.metrics.get(self._metric) if saved is not None else None
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                continue
            if self._metric_op * value > best[2]:
                best = (trial, saved, self._metric_op * value)
        return best[0], best[1]

    def _newest_to_clone(self, trial: Trial) -> _TrainingResult | None:
        """`trial`'s newest checkpoint with an iteration left after it (Tune keeps them in
        the order they were written, the newest also as the latest)."""
        kept = trial.run_metadata.checkpoint_manager
        for saved in (kept.latest_checkpoint_result, *reversed(kept.best_checkpoint_results)):
            if saved is not None and saved.checkpoint is not None and \
                    saved.metrics.get(self._time_attr, self._max_t) < self._max_t:
                return saved
        return None

    def _clone(self, trial: Trial, donor: Trial, saved: _TrainingResult) -> None:
        """Ray's exploit, for a trial that is already paused, from `donor`'s checkpoint
        `saved` (its newest)."""
        state, donor_state = self._trial_state[trial], self._trial_state[donor]
        data = getattr(self, "data", None)  # PB2 explores from a donor its model has seen
        if data is not None and ("Trial" not in data or str(donor) not in set(data["Trial"])):
            new_config = copy.deepcopy(donor.config)
        else:
            new_config, _ = self._get_new_config(trial, donor)
        log.info("trial %s (diverged) clones trial %s at %s %s", trial.trial_id,
                 donor.trial_id, self._time_attr, saved.metrics.get(self._time_attr))
        if self._log_config:
            self._log_exploit(state, donor_state, trial, donor, new_config, saved.metrics)
        trial.set_experiment_tag(_make_experiment_tag(state.orig_tag, new_config,
                                                      self._hyperparam_mutations))
        trial.set_config(new_config)
        trial.run_metadata.checkpoint_manager._latest_checkpoint_result = _TrainingResult(
            checkpoint=copy.copy(saved.checkpoint), metrics=saved.metrics)
        self._num_perturbations += 1
        state.last_train_time = state.last_perturbation_time = saved.metrics[self._time_attr]

    def _log_exploit(self, trial_state, donor_state, trial, donor, new_config,
                     donor_result: dict) -> None:
        """Ray's exploit log, with the target's deciding result and the donor's cloned one."""
        super()._log_config_on_step(trial_state, donor_state,
                                    _AtResult(trial, trial_state.last_result),
                                    _AtResult(donor, donor_result), new_config)


class RescuePBT(RescuePopulation, PopulationBasedTraining):
    """Ray's PBT with the rescue of diverged members and the exploit log of this module."""
