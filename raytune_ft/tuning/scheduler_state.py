"""A resumed experiment keeps its scheduler: ASHA's rungs, HyperBand's brackets, PBT's and
PB2's population history, and which trials a scheduler had paused.

Ray Tune 2.60 saves the searcher and the callbacks with every experiment snapshot, but
`Tuner.restore` rebuilds the scheduler from `tuner.pkl`, written before the first trial
(ray-project/ray#30838): empty rungs, no PBT history, so a trial ASHA would stop goes on.
And Tune requeues every unfinished trial as PENDING, which starts it at once: a trial that
HyperBand or synchronous PBT had paused at a milestone would train past it.

One generic mechanism for every registered scheduler, with no per-scheduler code:

- `Resumable` wraps the scheduler and forwards every call to it.
- `SchedulerState`, a Tune callback, returns the wrapped scheduler's pickled state from
  `get_state`, which Tune calls in the same save as the trial states (so both describe the
  same moment) and writes atomically as `callback-states-*.pkl`. The callback and the
  wrapper are pickled together in `tuner.pkl`, so after `Tuner.restore` the callback's
  `set_state` reaches the very wrapper Tune schedules with.
- The pickle names trials by id (they are rebuilt from Tune's own snapshot at a restore) and
  stores a pending checkpoint save (PBT's `_FutureTrainingResult`, an object reference of
  the old Ray session) as what it resolved to. Ray's global random states (PBT's explore,
  ASHA's bracket draw) are saved beside it.
- Once Tune has re-added the restored trials (the callback's `setup`, which Tune calls after
  its restore and before its first step), the wrapper swaps in the saved scheduler, puts the
  trials it had paused back to PAUSED, and hands a restarted errored trial to the scheduler
  as Tune's own retry does (`on_trial_add` again).
"""

from __future__ import annotations

import io
import logging
import pickle
import random
from typing import Any

from ray import tune
from ray.train._internal.session import _FutureTrainingResult
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

log = logging.getLogger(__name__)
_FORMAT = 1  # the layout of a saved state; another one is not restored
_RESOLVE_TIMEOUT_S = 10.0  # a checkpoint save in flight when the state is saved


class Resumable(TrialScheduler):
    """Any Ray Tune scheduler, whose state `SchedulerState` saves and restores."""

    def __init__(self, inner: TrialScheduler) -> None:
        self._inner = inner
        self._reset()

    def _reset(self) -> None:
        self._trials: dict[str, Trial] = {}  # every trial Tune added, by id
        self._pending: dict | None = None  # a saved state to put in force
        self._controller = None  # what Tune hands its scheduler calls (the last one seen)

    def __getstate__(self) -> dict:
        return {"_inner": self._inner}  # tuner.pkl: the scheduler as built, no trials

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_inner":  # unpickling: no `_inner` yet
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def inner(self) -> TrialScheduler:
        return self._inner

    # --------------------------------------------------------------- saving and restoring

    def save_state(self) -> dict:
        """The scheduler as it is now, with the statuses of its trials and Ray's random
        states: what `restore_state` needs to go on deciding as this one would."""
        import numpy as np

        return {"format": _FORMAT, "scheduler": _dumps(self._inner),
                "statuses": {trial_id: trial.status for trial_id, trial in self._trials.items()},
                "random": random.getstate(), "numpy": np.random.get_state()}

    def restore_state(self, state: dict) -> None:
        """Put `state` in force once Tune has re-added the restored trials."""
        if state.get("format") != _FORMAT:
            log.warning("the saved scheduler state has another format (%s); the resumed "
                        "scheduler starts empty", state.get("format"))
            return
        self._pending = state

    def ensure_restored(self, tune_controller=None) -> None:
        """Put a pending saved state in force (once; a no-op without one)."""
        state, self._pending = self._pending, None
        if state is None:
            return
        tune_controller = tune_controller or self._controller
        try:
            inner = _loads(state["scheduler"], self._trials)
        except KeyError as missing:
            log.warning("the saved scheduler state names trial %s, which the experiment "
                        "does not hold; the resumed scheduler starts empty", missing)
            return
        import numpy as np

        self._inner = inner
        random.setstate(state["random"])
        np.random.set_state(state["numpy"])
        statuses = state["statuses"]
        for trial_id, trial in self._trials.items():
            status = statuses.get(trial_id)
            if status is None or (status == Trial.ERROR and trial.status == Trial.PENDING):
                # added since the save, or an errored trial restarted: as Tune adds a new
                # trial or retries one
                inner.on_trial_add(tune_controller, trial)
            elif status == Trial.PAUSED and trial.status == Trial.PENDING:
                # waiting for its bracket or its population, not to be started at once
                tune_controller._set_trial_status(trial, Trial.PAUSED)
        log.info("scheduler state restored: %d trials", len(statuses))

    # --------------------------------------------------------------- Tune's scheduler calls

    @property
    def metric(self):
        return self._inner.metric

    @property
    def supports_buffered_results(self) -> bool:
        return self._inner.supports_buffered_results

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return self._inner.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._trials[trial.trial_id] = trial
        self._controller = tune_controller
        # also while a saved state waits: it replaces this scheduler, and if it cannot be
        # read this one goes on with every trial
        self._inner.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self.ensure_restored(tune_controller)
        self._inner.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        self.ensure_restored(tune_controller)
        return self._inner.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self.ensure_restored(tune_controller)
        self._inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self.ensure_restored(tune_controller)
        self._inner.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        self.ensure_restored(tune_controller)
        return self._inner.choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return self._inner.debug_string()


class SchedulerState(tune.Callback):
    """Saves `scheduler`'s state with every experiment snapshot; hands it back at a restore.

    Pickled with the scheduler in `tuner.pkl`, so a restored experiment's callback and
    scheduler are the same pair (a shared reference survives one pickle)."""

    def __init__(self, scheduler: Resumable) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return {"scheduler": self.scheduler.save_state()}

    def set_state(self, state: dict) -> None:
        self.scheduler.restore_state(state["scheduler"])

    def setup(self, **info) -> None:
        # after Tune re-added the restored trials, before its first step
        self.scheduler.ensure_restored()


def resumable(scheduler: TrialScheduler) -> tuple[Resumable, SchedulerState]:
    """`scheduler` wrapped, and the callback that saves it with the experiment."""
    wrapped = scheduler if isinstance(scheduler, Resumable) else Resumable(scheduler)
    return wrapped, SchedulerState(wrapped)


# ------------------------------------------------------------------------- the pickle

class _ResolvedSave(_FutureTrainingResult):
    """A checkpoint save that was in flight when the state was saved, as what it resolved
    to (None: no checkpoint), without the object reference of a Ray session that ended."""

    def __init__(self, value) -> None:
        self.future = None
        self._value = value

    def resolve(self, block: bool = True):
        return self._value


def _resolved(future: _FutureTrainingResult):
    if isinstance(future, _ResolvedSave):
        return future.resolve()
    import ray

    try:
        return ray.get(future.future, timeout=_RESOLVE_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - an actor gone at Ctrl-C: no checkpoint
        log.debug("a checkpoint save did not resolve (%s); saved as none", error)
        return None


def _dumps(scheduler: TrialScheduler) -> bytes:
    from ray import cloudpickle

    class Pickler(cloudpickle.CloudPickler):
        def persistent_id(self, obj):
            if isinstance(obj, Trial):
                return ("trial", obj.trial_id)
            if isinstance(obj, _FutureTrainingResult):
                return ("save", _resolved(obj))
            return None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(scheduler)
    return buffer.getvalue()


def _loads(data: bytes, trials: dict[str, Trial]) -> TrialScheduler:
    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid):
            kind, value = pid
            if kind == "trial":
                return trials[value]  # KeyError: a trial the experiment does not hold
            return _ResolvedSave(value)

    return Unpickler(io.BytesIO(data)).load()
