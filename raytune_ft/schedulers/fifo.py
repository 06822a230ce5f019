"""FIFO: every trial runs its whole budget (Ray Tune's `FIFOScheduler`)."""

from __future__ import annotations

from typing import Literal

from raytune_ft.config import SchedulerSettings
from raytune_ft.plan import TrialPlan
from raytune_ft.schedulers._base import Scheduler


class FifoSettings(SchedulerSettings):
    type: Literal["fifo"] = "fifo"


def build(settings: FifoSettings, plan: TrialPlan):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


SCHEDULER = Scheduler(FifoSettings, build, example={"type": "fifo"})
