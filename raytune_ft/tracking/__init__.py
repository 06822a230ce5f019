"""Experiment trackers: TensorBoard, MLflow, W&B. One module per tracker behind one registry.

A tracker is an entry in `TRACKERS`: `callbacks(context)` gives the Tune callbacks the runner
adds to its `RunConfig` (they run in the driver), `finish(context, end)` runs once the
analysis tables and report.html are written, and `check(config)` refuses, before Ray starts,
a setting the tool would refuse at its first log. Adding a tracker is one module and one line.

Every tracker logs every reported metric against `samples_seen`; a tracker that fails never
stops a trial (`_guard`: one warning, and `not_logged()` for the end summary); credentials come
only from the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raytune_ft.config import ExperimentConfig
from raytune_ft.tracking._guard import not_logged, reset

__all__ = ["TRACKERS", "End", "Tracker", "TrackingContext", "check_tracking", "finish_tracking",
           "not_logged", "tracking_callbacks"]


@dataclass(frozen=True)
class TrackingContext:
    config: ExperimentConfig
    experiment_dir: str  # <storage_path>/<name>: a path or a URI
    iterations: int  # a full-budget trial's Tune iterations: terminated vs stopped


@dataclass(frozen=True)
class End:
    """What the end-of-run step hands each tracker."""

    analysis_dir: Path | None  # the written analysis folder (local), None if the export failed
    best: tuple[str, float] | None  # (metric, value) of the best trial
    interrupted: bool


@dataclass(frozen=True)
class Tracker:
    callbacks: Callable[[TrackingContext], list]
    finish: Callable[[TrackingContext, End], None] | None = None
    check: Callable[[ExperimentConfig], None] | None = None  # raises ConfigError


def _tensorboard(context: TrackingContext) -> list:
    from raytune_ft.tracking._tensorboard import TensorboardTracker

    return [TensorboardTracker(context.config.metric, context.iterations)]


def _mlflow(context: TrackingContext) -> list:
    from raytune_ft.tracking._common import flat_params
    from raytune_ft.tracking._mlflow import MlflowTracker, tracking_uri

    config = context.config
    settings = config.tracking.mlflow
    return [MlflowTracker(tracking_uri(settings.tracking_uri),
                          settings.experiment_name or config.name, context.experiment_dir,
                          context.experiment_dir.rstrip("/").rsplit("/", 1)[-1],
                          context.iterations, flat_params(config.model_dump(mode="json")))]


def _mlflow_finish(context: TrackingContext, end: End) -> None:
    from raytune_ft.tracking._mlflow import finish

    finish(context.experiment_dir, end.analysis_dir, end.best, end.interrupted)


def _mlflow_check(config: ExperimentConfig) -> None:
    from raytune_ft.tracking._mlflow_store import check_store

    check_store(config.tracking.mlflow.tracking_uri)


def _wandb(context: TrackingContext) -> list:
    from raytune_ft.tracking._wandb import WandbTracker

    settings = context.config.tracking.wandb
    group = context.experiment_dir.rstrip("/").rsplit("/", 1)[-1]
    return [WandbTracker(settings.project, group, settings.mode, settings.entity,
                         context.experiment_dir, context.iterations)]


TRACKERS: dict[str, Tracker] = {
    "tensorboard": Tracker(_tensorboard),
    "mlflow": Tracker(_mlflow, _mlflow_finish, _mlflow_check),
    "wandb": Tracker(_wandb),
}


def check_tracking(config: ExperimentConfig) -> None:
    """Every switched-on tracker's settings as its tool will take them (ConfigError)."""
    for name in config.tracking.enabled():
        check = TRACKERS[name].check
        if check is not None:
            check(config)


def tracking_callbacks(context: TrackingContext) -> list:
    """The Tune callbacks of every tracker the experiment switches on; a clean ledger."""
    reset()
    return [callback for name in context.config.tracking.enabled()
            for callback in TRACKERS[name].callbacks(context)]


def finish_tracking(context: TrackingContext, end: End) -> list[str]:
    """The trackers' end-of-run step; returns what was not logged (one line per tracker)."""
    for name in context.config.tracking.enabled():
        finish = TRACKERS[name].finish
        if finish is not None:
            finish(context, end)
    return not_logged()
