"""Weights & Biases: a run per trial in a group named after the experiment run, x axis
samples_seen, all opened from one background thread of the driver (`_wandb`). The API key
comes only from the environment (WANDB_API_KEY)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raytune_ft.config import TrackerSettings
from raytune_ft.tracking._base import Tracker, TrackingContext


class WandbSettings(TrackerSettings):
    project: str = Field(min_length=1)  # the W&B project; trials are grouped by experiment name
    mode: Literal["online", "offline"] = "online"  # offline: run files under $WANDB_DIR only
    entity: str | None = None  # team or user; None: the API key's default entity


def callbacks(context: TrackingContext) -> list:
    from raytune_ft.tracking._wandb import WandbTracker

    settings = context.settings
    return [WandbTracker(settings.project, context.group, settings.mode, settings.entity,
                         context.experiment_dir, context.iterations)]


def header(settings: WandbSettings) -> str:
    return f"wandb (project {settings.project}, {settings.mode})"


TRACKER = Tracker(WandbSettings, "wandb", "wandb", callbacks, header,
                  example={"project": "raytune-ft", "mode": "offline"})
