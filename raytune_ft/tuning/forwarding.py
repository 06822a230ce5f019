"""A Tune scheduler that wraps another and hands it every call: the base of the wrappers
raytune_ft puts around each experiment's scheduler, `scheduler_state.Resumable` (saved and
restored with the experiment) and `concurrency.RunningLimit` (`run.max_concurrent_trials`).
A subclass changes the calls it is about and inherits the rest of Tune's scheduler API.
"""

from __future__ import annotations

from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import TrialScheduler


class ForwardingScheduler(TrialScheduler):
    """`inner`, with every call of Tune's `TrialScheduler` API forwarded to it, and any
    other attribute read from it (a wrapped PBT's, say)."""

    def __init__(self, inner: TrialScheduler) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "_inner":  # unpickling: no `_inner` yet
            raise AttributeError(name)
        return getattr(self._inner, name)

    @property
    def inner(self) -> TrialScheduler:
        return self._inner

    def _scheduler(self, tune_controller) -> TrialScheduler:
        """The scheduler a trial event goes to: a subclass may bring it up to date first."""
        return self._inner

    @property
    def metric(self):
        return self._inner.metric

    @property
    def supports_buffered_results(self) -> bool:
        return self._inner.supports_buffered_results

    def set_search_properties(self, metric, mode, **spec) -> bool:
        return self._inner.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller, trial: Trial) -> None:
        self._scheduler(tune_controller).on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller, trial: Trial) -> None:
        self._scheduler(tune_controller).on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial: Trial, result: dict) -> str:
        return self._scheduler(tune_controller).on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller, trial: Trial, result: dict) -> None:
        self._scheduler(tune_controller).on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller, trial: Trial) -> None:
        self._scheduler(tune_controller).on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller) -> Trial | None:
        return self._scheduler(tune_controller).choose_trial_to_run(tune_controller)

    def debug_string(self) -> str:
        return self._inner.debug_string()

    def save(self, checkpoint_path: str) -> None:
        self._inner.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self._inner.restore(checkpoint_path)
