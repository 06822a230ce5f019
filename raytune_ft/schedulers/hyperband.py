"""HyperBand (Li et al. 2018), Ray Tune's synchronous `HyperBandScheduler`: it pauses trials
until their bracket is full, so each resumes from its last checkpoint."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raytune_ft.config import SchedulerSettings
from raytune_ft.plan import TrialPlan
from raytune_ft.schedulers._base import TIME_ATTR, Scheduler


class HyperbandSettings(SchedulerSettings):
    type: Literal["hyperband"] = "hyperband"
    reduction_factor: float = Field(3, gt=1)  # 1/reduction_factor of a bracket goes on


def build(settings: HyperbandSettings, plan: TrialPlan):
    from ray.tune.schedulers import HyperBandScheduler

    return HyperBandScheduler(time_attr=TIME_ATTR, max_t=plan.iterations,
                              reduction_factor=settings.reduction_factor)


# reduction_factor 2: in a short experiment (4 iterations, tests) a bracket still halves
SCHEDULER = Scheduler(HyperbandSettings, build,
                      example={"type": "hyperband", "reduction_factor": 2},
                      pauses_trials=True)
