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


class WandbTracker(WandbLoggerCallback):
    _logger_actor_cls = _SamplesSeenActor

    def __init__(self, project: str, group: str, mode: str, entity: str | None):
        extra = {"entity": entity} if entity else {}
        super().__init__(project=project, group=group, mode=mode, resume="allow",
                         upload_timeout=120, **extra)

    def _cleanup_logging_actor(self, trial) -> None:
        future = self._trial_logging_futures.get(trial)
        if future is not None:
            try:
                ray.get(future, timeout=0)
            except Exception as error:  # noqa: BLE001 - a W&B failure must spare the run
                _guard.fail(TRACKER, f"trial {trial}", error)
                _guard.skip(TRACKER, "trial runs")
        super()._cleanup_logging_actor(trial)
