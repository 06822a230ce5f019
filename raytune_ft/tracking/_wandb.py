"""Weights & Biases: Ray's `WandbLoggerCallback` (one run per trial, logged from a Ray actor
of its own, so the driver never waits on W&B), with three changes for this project:

- the x axis is `samples_seen`, not W&B's step: Ray logs with step = training_iteration,
  which a PBT exploit moves backwards (W&B then drops the points);
- a resumed experiment continues each trial's run (`resume="allow"` with the trial id);
- a logging actor that failed (W&B refused or unreachable) is a warning and a line in the
  end summary, not a silent gap; Ray waits at most two minutes for uploads at the end.

The API key is read by wandb from `WANDB_API_KEY` (Ray hands that variable to the actors);
the callback never holds it, so the pickled experiment does not either.
"""

from __future__ import annotations

import ray
from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor
from ray.tune.result import TRAINING_ITERATION

from raytune_ft.tracking import _guard
from raytune_ft.tracking._common import STEP
from raytune_ft.tracking._guard import Guarded

TRACKER = "wandb"


class _SamplesSeenActor(_WandbLoggingActor):
    def _handle_result(self, result: dict):
        if not getattr(self, "_axis_defined", False):
            self._wandb.define_metric(STEP)
            self._wandb.define_metric("*", step_metric=STEP)
            self._axis_defined = True
        log, config = super()._handle_result(result)
        # Without TRAINING_ITERATION Ray's actor logs with W&B's own increasing step.
        if TRAINING_ITERATION in log:
            log["iteration"] = log.pop(TRAINING_ITERATION)
        return log, config


class WandbTracker(Guarded, WandbLoggerCallback):
    """Every hook runs under the guard: an exception in a Tune callback would end the run."""

    tracker = TRACKER
    _logger_actor_cls = _SamplesSeenActor

    def __init__(self, project: str, group: str, mode: str, entity: str | None):
        extra = {"entity": entity} if entity else {}
        super().__init__(project=project, group=group, mode=mode, resume="allow",
                         upload_timeout=120, **extra)

    def setup(self, *args, **kwargs):
        if self.kwargs.get("mode") == "offline":
            return  # Ray asks for an API key unless WANDB_MODE says offline; none is needed
        self._guard("the setup", "its setup (the API key)", super().setup, *args, **kwargs)

    def log_trial_start(self, trial):
        self._guard("trial runs", f"trial {trial}: its run", super().log_trial_start, trial)

    def log_trial_result(self, iteration, trial, result):
        self._guard("results", f"trial {trial}: iteration {result.get(TRAINING_ITERATION)}",
                    super().log_trial_result, iteration, trial, result)

    def log_trial_save(self, trial):
        self._guard("checkpoints", f"trial {trial}: a checkpoint", super().log_trial_save,
                    trial)

    def log_trial_end(self, trial, failed: bool = False):
        self._guard("trial ends", f"trial {trial}: its end", super().log_trial_end, trial,
                    failed)

    def on_experiment_end(self, trials, **info):
        if self._trial_logging_futures:  # wait for uploads even after a failure
            try:
                super().on_experiment_end(trials, **info)
            except Exception as error:  # noqa: BLE001 - the experiment itself is complete
                _guard.fail(TRACKER, "the final uploads", error)

    def _cleanup_logging_actor(self, trial) -> None:
        future = self._trial_logging_futures.get(trial)
        if future is not None:
            try:
                ray.get(future, timeout=0)
            except Exception as error:  # noqa: BLE001 - a W&B failure must spare the run
                _guard.fail(TRACKER, f"trial {trial}", error)
                _guard.skip(TRACKER, "trial runs")
        super()._cleanup_logging_actor(trial)
