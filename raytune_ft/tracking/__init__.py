"""Experiment trackers: TensorBoard, MLflow, W&B. The registry: one module per tracker, holding
its settings class, the package it needs, its Tune callbacks, its end-of-run step and its
run-header words (`Tracker`).

Adding a tracker is one module defining `TRACKER` and its line below. The experiment's
`tracking:` section is assembled from the registry (`settings_model`); reading the registry
imports no tracker client and no Ray.

Every tracker logs every reported metric against `samples_seen`; a tracker that fails never
stops a trial (`_guard`: one warning, and `not_logged()` for the end summary); credentials come
only from the environment.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, create_model, model_validator

from raytune_ft.config import Strict, TrackerSettings, load_entries
from raytune_ft.tracking._base import End, Tracker, TrackingContext
from raytune_ft.tracking._guard import not_logged, reset

__all__ = ["TRACKERS", "End", "Tracker", "TrackingContext", "check_tracking",
           "finish_tracking", "not_logged", "settings_model", "tracking_callbacks",
           "tracking_header"]

# tracking.<name> -> its module's TRACKER; one line per tracker
TRACKERS: dict[str, Tracker] = load_entries(__name__, "TRACKER", (
    "tensorboard",
    "mlflow",
    "wandb",
))


class TrackingSection(Strict):
    """The `tracking:` section: one optional settings entry per registered tracker."""

    def enabled(self) -> list[str]:
        """The trackers switched on, in registry order (the order they are set up)."""
        return [name for name in TRACKERS if getattr(self, name) is not None]

    @model_validator(mode="after")
    def _packages_installed(self) -> TrackingSection:
        for name in self.enabled():
            spec = TRACKERS[name]
            if importlib.util.find_spec(spec.package) is None:
                raise ValueError(f"tracking.{name}: the {spec.package} package is not "
                                 f"installed; pip install 'raytune-ft[{spec.extra}]'")
        return self


def settings_model() -> type[TrackingSection]:
    """The `tracking:` section's model: `<name>: <its settings> | None` per tracker, where
    `true` stands for the tracker's defaults."""
    fields: dict[str, Any] = {
        name: (Annotated[spec.settings | None, BeforeValidator(TrackerSettings.switch)],
               Field(None, description=_first_line(spec)))
        for name, spec in TRACKERS.items()}
    return create_model("TrackingConfig", __base__=TrackingSection, **fields)


def _first_line(spec: Tracker) -> str:
    module = importlib.import_module(spec.callbacks.__module__)
    return (module.__doc__ or "").strip().split(". ")[0].replace("\n", " ")


def _contexts(tracking: TrackingSection, run: TrackingContext) -> list[tuple[str, Any]]:
    return [(name, dataclasses.replace(run, settings=getattr(tracking, name)))
            for name in tracking.enabled()]


def check_tracking(tracking: TrackingSection, record: str | None = None) -> None:
    """Every switched-on tracker's settings as its tool will take them (ConfigError).

    `record`: the experiment record a resume read `tracking` from (None for a new run); a
    resume takes no `--set`, so an error names what it can change instead."""
    for name in tracking.enabled():
        check = TRACKERS[name].check
        if check is not None:
            check(getattr(tracking, name), record)


def tracking_callbacks(tracking: TrackingSection, run: TrackingContext) -> list:
    """The Tune callbacks of every tracker `tracking` switches on; a clean ledger. `run`'s
    settings are each tracker's own."""
    reset()
    return [callback for name, context in _contexts(tracking, run)
            for callback in TRACKERS[name].callbacks(context)]


def finish_tracking(tracking: TrackingSection, run: TrackingContext, end: End) -> list[str]:
    """The trackers' end-of-run step; returns what was not logged (one line per tracker)."""
    for name, context in _contexts(tracking, run):
        finish = TRACKERS[name].finish
        if finish is not None:
            finish(context, end)
    return not_logged()


def tracking_header(tracking: TrackingSection) -> str:
    """Where the trackers send the trials (no credentials: those live in the environment)."""
    return ", ".join(TRACKERS[name].header(getattr(tracking, name))
                     for name in tracking.enabled())
