"""Population-based training (Jaderberg et al. 2017), Ray Tune's `PopulationBasedTraining`:
at every perturbation interval the bottom quantile of trials clones a top trial's checkpoint
and explores its hyperparameters (a choice list moves to a neighbouring value, a
distribution is scaled by the perturbation factors or resampled)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from raytune_ft.plan import TrialPlan
from raytune_ft.schedulers._base import Scheduler
from raytune_ft.schedulers._population import (
    PopulationSettings,
    population_settings,
    to_tune,
)


class PbtSettings(PopulationSettings):
    type: Literal["pbt"] = "pbt"
    burn_in_period: int = Field(0, ge=0)  # iterations before the first exploit
    resample_probability: float = Field(0.25, ge=0, le=1)  # explore by a fresh draw
    perturbation_factors: tuple[float, float] = (1.2, 0.8)  # explore by scaling


def build(settings: PbtSettings, plan: TrialPlan):
    from raytune_ft.schedulers._rescue import RescuePBT

    space = plan.space
    mutations = {key: list(space[key].args) if space[key].kind in ("choice", "grid")
                 else to_tune(space[key]) for key in settings.mutations}
    return RescuePBT(
        hyperparam_mutations=mutations, resample_probability=settings.resample_probability,
        burn_in_period=settings.burn_in_period,
        perturbation_factors=tuple(settings.perturbation_factors),
        **population_settings(settings, plan))


_POPULATION = dict(population=True, checkpoint_every_iteration=True, pauses_trials=True,
                   keeps_diverged=True)
SCHEDULER = Scheduler(PbtSettings, build, example={
    "type": "pbt", "perturbation_interval": 1, "mutations": ["learning_rate"]}, **_POPULATION)
