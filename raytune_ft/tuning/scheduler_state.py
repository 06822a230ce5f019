"""A resumed experiment keeps its scheduler: ASHA's rungs, HyperBand's brackets, PBT's and
PB2's population history, and which trials a scheduler had paused.

Ray Tune 2.60 saves the searcher and the callbacks with every experiment snapshot, but
`Tuner.restore` rebuilds the scheduler from `tuner.pkl`, written before the first trial
(ray-project/ray#30838): empty rungs, no PBT history, so a trial ASHA would stop goes on.
And Tune requeues every unfinished trial as PENDING, which starts it at once: a trial that
HyperBand or synchronous PBT had paused at a milestone would train past it.

One generic mechanism for every registered scheduler, with no per-scheduler code:

- `Resumable` wraps the scheduler and forwards every call to it (`forwarding`).
- `SchedulerState`, a Tune callback, returns the wrapped scheduler's pickled state from
  `get_state`, which Tune calls in the same save as the trial states (so both describe the
  same moment) and writes atomically as `callback-states-*.pkl`. The callback and the
  wrapper are pickled together in `tuner.pkl`, so after `Tuner.restore` the callback's
  `set_state` reaches the very wrapper Tune schedules with.
- The pickle names trials by id (they are rebuilt from Tune's own snapshot at a restore) and
  stores a pending checkpoint save (PBT's `_FutureTrainingResult`, an object reference of
  the old Ray session) as what it resolved to, or, where it does not resolve at once, as the
  saving trial's newest checkpoint. Ray's global random states (PBT's explore,
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

from ray import tune
from ray.train._internal.session import _FutureTrainingResult
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from raytune_ft.tuning.forwarding import ForwardingScheduler

log = logging.getLogger(__name__)
_FORMAT = 1  # the layout of a saved state; another one is not restored
# How long a snapshot waits for a checkpoint save in flight (PBT's); a function trainable's
# save answers at once, so a longer wait means the actor is gone or busy, and the trial's
# newest checkpoint, which is what that save returns, stands in for it.
_RESOLVE_TIMEOUT_S = 1.0


class Resumable(ForwardingScheduler):
    """Any Ray Tune scheduler, whose state `SchedulerState` saves and restores."""

    def __init__(self, inner: TrialScheduler) -> None:
        super().__init__(inner)
        self._reset()

    def _reset(self) -> None:
        self._trials: dict[str, Trial] = {}  # every trial Tune added, by id
        self._pending: dict | None = None  # a saved state to put in force
        self._controller = None  # what Tune hands its scheduler calls (the last one seen)
        self._held_back: set[str] = set()  # trials a running limit keeps PAUSED, by id

    def __getstate__(self) -> dict:
        return {"_inner": self._inner}  # tuner.pkl: the scheduler as built, no trials

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def hold_back(self, trial_ids) -> None:
        """The trials a running limit (`concurrency.RunningLimit`) keeps PAUSED now.

        They are saved as PENDING: the scheduler never paused them, and a trial restored
        PAUSED waits for the scheduler to hand it back, which HyperBand never does for a
        trial its brackets did not pause. PENDING, the resumed limit holds them again."""
        self._held_back = set(trial_ids)

    # --------------------------------------------------------------- saving and restoring

    def save_state(self) -> dict:
        """The scheduler as it is now, with the statuses of its trials and Ray's random
        states: what `restore_state` needs to go on deciding as this one would."""
        import numpy as np

        statuses = {trial_id: Trial.PENDING if trial_id in self._held_back
                    and trial.status == Trial.PAUSED else trial.status
                    for trial_id, trial in self._trials.items()}
        return {"format": _FORMAT, "scheduler": _dumps(self._inner, self._trials.values()),
                "statuses": statuses,
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

    def _scheduler(self, tune_controller) -> TrialScheduler:
        self.ensure_restored(tune_controller)  # a saved state first, at Tune's first call
        return self._inner

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._trials[trial.trial_id] = trial
        self._controller = tune_controller
        # also while a saved state waits: it replaces this scheduler, and if it cannot be
        # read this one goes on with every trial
        self._inner.on_trial_add(tune_controller, trial)


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


def _resolved(future: _FutureTrainingResult, trial: Trial | None):
    """What a checkpoint save resolved to, or, when it does not resolve at once (an actor
    gone at Ctrl-C, or busy), the newest checkpoint of the trial saving it: what a function
    trainable's save returns, so a restored PBT exploits it as the uninterrupted one would
    (None would skip that exploit)."""
    if isinstance(future, _ResolvedSave):
        return future.resolve()
    import ray

    try:
        return ray.get(future.future, timeout=_RESOLVE_TIMEOUT_S)
    except Exception as error:  # noqa: BLE001 - a dead actor, a timeout: the trial's own
        newest = trial.latest_checkpoint_result if trial is not None else None
        log.debug("a checkpoint save of %s did not resolve (%s); saved as its newest "
                  "checkpoint, %s", trial, error, newest and newest.checkpoint)
        return newest


def _dumps(scheduler: TrialScheduler, trials) -> bytes:
    """`scheduler` pickled with its `trials` as ids, a pending save as what it resolved to."""
    from ray import cloudpickle

    # Tune keeps the save in flight on the trial it saves (PBT holds the same object)
    saving = {id(t.temporary_state.saving_to): t for t in trials
              if isinstance(t.temporary_state.saving_to, _FutureTrainingResult)}

    class Pickler(cloudpickle.CloudPickler):
        def persistent_id(self, obj):
            if isinstance(obj, Trial):
                return ("trial", obj.trial_id)
            if isinstance(obj, _FutureTrainingResult):
                return ("save", _resolved(obj, saving.get(id(obj))))
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
