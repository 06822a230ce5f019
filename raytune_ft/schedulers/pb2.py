"""PB2 (Parker-Holder et al. 2020): population-based bandits, PBT whose explore step is a
Gaussian-process bandit over the mutated keys' bounds (Ray Tune's `PB2`, here on a log10
scale for log-scaled keys: `_log_pb2.LogScalePB2`)."""

from __future__ import annotations

from typing import Literal

from raytune_ft.config import Domain
from raytune_ft.plan import TrialPlan
from raytune_ft.schedulers._base import Scheduler
from raytune_ft.schedulers._population import PopulationSettings, bounds, population_settings


class Pb2Settings(PopulationSettings):
    type: Literal["pb2"] = "pb2"

    def check_mutation(self, key: str, space: dict[str, Domain]) -> None:
        super().check_mutation(key, space)
        domain = space[key]
        if domain.kind in ("choice", "grid") and not all(
                isinstance(v, (int, float)) for v in domain.args):
            raise ValueError(f"scheduler.mutations: PB2 needs numeric bounds for "
                             f"search.{key}, got {list(domain.args)!r}")


def build(settings: Pb2Settings, plan: TrialPlan):
    from raytune_ft.schedulers._log_pb2 import LogScalePB2

    keys = settings.mutations
    return LogScalePB2(hyperparam_bounds={key: bounds(plan.space[key]) for key in keys},
                       log_keys=tuple(key for key in keys if key in plan.log_scaled),
                       **population_settings(settings, plan))


SCHEDULER = Scheduler(Pb2Settings, build, example={
    "type": "pb2", "perturbation_interval": 1, "mutations": ["learning_rate"]},
    population=True, checkpoint_every_iteration=True, pauses_trials=True, keeps_diverged=True)
