"""Stopping the whole search (`run.stop`): a plateau of the best metric over finished trials,
a cap on device-hours, a target value. The first rule that fires ends the experiment and
its reason is written to `<experiment>/stop_reason.json`, which the end summary and the
report read.

`SearchStopper` is both Tune's `Stopper` (it ends every trial at the budget's last iteration,
as the plain `{"training_iteration": n}` stop does, and ends the experiment through
`stop_all`) and a `Callback` (Tune tells callbacks, not stoppers, when a trial completes,
including one a scheduler stopped early). The same object is passed as both.

Its bookkeeping (device-hours spent, each trial's best, the best over finished trials, the
plateau count) survives `raytune-ft resume`, so the rules continue where the interrupted
run left off. Tune 2.60 saves it twice: as callback state (`get_state`, restored through
`set_state`) and with the stopper, which the controller pickles into the experiment state
(`TuneController.__getstate__` keeps `_stopper`). A resumed run so holds two copies of this
object (the callbacks' from tuner.pkl, the controller's from the experiment state); on
unpickling, copies of one stopper share one `__dict__`, so both roles see the same counts.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
import weakref

from ray import tune

from raytune_ft.experiment import STOP_FILE
from raytune_ft.schema import ExperimentConfig

log = logging.getLogger(__name__)
# Unpickled stoppers by the `token` of the object they copy: copies share its state.
_COPIES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


class SearchStopper(tune.Stopper, tune.Callback):
    """The `run.stop` rules on the experiment metric (the first objective)."""

    def __init__(self, config: ExperimentConfig, iterations: int, experiment_dir: str) -> None:
        rules = config.run.stop
        self.metric, self.mode = config.metric, config.mode
        self.iterations = iterations
        self.plateau = rules.plateau
        self.max_device_hours, self.target = rules.max_device_hours, rules.target
        resources = config.resources
        # device-seconds per wall-second of a trial, as analysis counts device hours
        workers = resources.workers_per_trial  # every worker's devices (analysis counts so)
        self.per_trial = workers * (resources.worker_gpus or resources.worker_cpus)
        self.experiment_dir = experiment_dir
        self.device_hours = 0.0
        self.trial_best: dict[str, float] = {}
        self.best: float | None = None  # the best over finished trials
        self.without_gain = 0  # finished trials in a row that did not improve it
        self.finished = 0
        self.reason: dict | None = None
        self.token = uuid.uuid4().hex  # the same in every pickled copy of this object

    # ---------------------------------------------------------------- saved state

    STATE = ("device_hours", "trial_best", "best", "without_gain", "finished", "reason")

    def get_state(self) -> dict:
        """What the rules have counted so far (Tune saves it with the experiment)."""
        return {key: getattr(self, key) for key in self.STATE}

    def set_state(self, state: dict) -> None:
        """Continue from a saved experiment's counts (`raytune-ft resume`)."""
        for key in self.STATE:
            if key in state:
                setattr(self, key, state[key])

    def __setstate__(self, state: dict) -> None:
        token = state.get("token")  # None: pickled before copies shared their state
        first = _COPIES.get(token) if token is not None else None
        if first is None:
            self.__dict__.update(state)
            if token is not None:
                _COPIES[token] = self
            return
        if state["device_hours"] > first.device_hours:  # the later save of the two
            first.__dict__.update(state)
        self.__dict__ = first.__dict__

    # ---------------------------------------------------------------- Stopper

    def __call__(self, trial_id: str, result: dict) -> bool:
        self.device_hours += float(result.get("time_this_iter_s") or 0.0) * self.per_trial / 3600
        value = result.get(self.metric)
        if _finite(value):
            old = self.trial_best.get(trial_id)
            self.trial_best[trial_id] = value if old is None or self._better(value, old) \
                else old
            if self.target is not None and self._reaches(value):
                self._stop("target", f"trial {trial_id} reported {self.metric}={value:.6g}, "
                           f"reaching run.stop.target {self.target:g}")
        if self.max_device_hours is not None and self.device_hours >= self.max_device_hours:
            self._stop("max_device_hours", f"{self.device_hours:.4g} device-hours spent, "
                       f"reaching run.stop.max_device_hours {self.max_device_hours:g}")
        return int(result.get("training_iteration") or 0) >= self.iterations

    def stop_all(self) -> bool:
        return self.reason is not None

    # ---------------------------------------------------------------- Callback

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.finished += 1
        if self.plateau is None:
            return
        value = self.trial_best.get(trial.trial_id)
        if value is not None and (self.best is None or self._gain(value) > self.plateau.min_delta):
            self.best, self.without_gain = value, 0
        else:
            self.without_gain += 1
        if self.without_gain >= self.plateau.patience and self.best is not None:
            self._stop("plateau", f"the best {self.metric} ({self.best:.6g}) did not improve "
                       f"by more than {self.plateau.min_delta:g} over the last "
                       f"{self.without_gain} finished trials (run.stop.plateau.patience "
                       f"{self.plateau.patience})")

    # ---------------------------------------------------------------- rules

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def _gain(self, value: float) -> float:
        return value - self.best if self.mode == "max" else self.best - value

    def _reaches(self, value: float) -> bool:
        return value >= self.target if self.mode == "max" else value <= self.target

    def _stop(self, rule: str, detail: str) -> None:
        if self.reason is not None:  # the first rule that fired is the reason
            return
        self.reason = {"rule": rule, "detail": detail, "finished_trials": self.finished,
                       "device_hours": self.device_hours}
        log.info("stopping the search: %s", detail)
        write_stop_reason(self.experiment_dir, self.reason)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def write_stop_reason(experiment_dir: str, reason: dict) -> None:
    from raytune_ft.storage import write_text

    write_text(f"{experiment_dir}/{STOP_FILE}", json.dumps(reason, indent=1))


def read_stop_reason(experiment_dir: str) -> dict | None:
    """What stopped the search early, or None (it ran every trial, or no rule was set)."""
    from raytune_ft.storage import read_text

    try:
        return json.loads(read_text(f"{experiment_dir}/{STOP_FILE}"))
    except (OSError, ValueError):
        return None
