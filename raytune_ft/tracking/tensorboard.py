"""TensorBoard: event files in each trial's folder (x axis samples_seen) with HParams; Ray
copies them to storage with its own files, so `tensorboard --logdir <experiment>` reads
them. Needs the `tensorboard` extra (torch's SummaryWriter)."""

from __future__ import annotations

from raytune_ft.config import TrackerSettings
from raytune_ft.tracking._base import Tracker, TrackingContext


class TensorboardSettings(TrackerSettings):
    """No settings: `tracking.tensorboard: true` switches it on."""


def callbacks(context: TrackingContext) -> list:
    from raytune_ft.tracking._tensorboard import TensorboardTracker

    return [TensorboardTracker(context.metric, context.iterations)]


def header(settings: TensorboardSettings) -> str:
    return "tensorboard (event files in each trial folder)"


TRACKER = Tracker(TensorboardSettings, "tensorboard", "tensorboard", callbacks, header,
                  example={})
