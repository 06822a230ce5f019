"""ASHA: asynchronous successive halving (Li et al. 2020), Ray Tune's `ASHAScheduler`; rungs
are counted in Tune iterations, one per evaluation interval, so trials are compared at
equal training samples whatever their batch size."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raytune_ft.config import Domain, SchedulerSettings
from raytune_ft.plan import TrialPlan
from raytune_ft.schedulers._base import TIME_ATTR, Scheduler


class AshaSettings(SchedulerSettings):
    type: Literal["asha"] = "asha"
    grace_period: int = Field(1, gt=0)  # iterations before the first rung
    reduction_factor: float = Field(2, gt=1)  # 1/reduction_factor of the trials go on
    brackets: int = Field(1, gt=0)  # ASHA brackets (1: plain successive halving)

    def check_against(self, iterations: int, space: dict[str, Domain]) -> None:
        if self.grace_period > iterations:
            raise ValueError(f"scheduler.grace_period: {self.grace_period} iterations is above "
                             f"the budget of {iterations} (train.max_epochs / "
                             "train.eval_every_epochs)")


def build(settings: AshaSettings, plan: TrialPlan):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=TIME_ATTR, max_t=plan.iterations,
                         grace_period=settings.grace_period,
                         reduction_factor=settings.reduction_factor, brackets=settings.brackets)


SCHEDULER = Scheduler(AshaSettings, build,
                      example={"type": "asha", "grace_period": 1, "reduction_factor": 2})
