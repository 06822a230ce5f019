"""How many checkpoints Ray keeps per trial (`tuning.runner.checkpoints_to_keep`): the
scheduler answers, so a population-based scheduler with settings of its own (no
`perturbation_interval`) works through its registry entry alone."""

from __future__ import annotations

from typing import Literal

import pytest

from raytune_ft.config import SchedulerSettings
from raytune_ft.schedulers import SCHEDULERS, Scheduler
from raytune_ft.schema import validate_config
from raytune_ft.tuning.runner import checkpoints_to_keep

SEARCH = {"learning_rate": {"loguniform": [1e-5, 1e-3]}}


def experiment(scheduler: dict, **run) -> object:
    return validate_config({
        "name": "x", "model": {"name": "m"}, "data": {"task": "sst2"},
        "train": {"max_epochs": 2, "eval_every_epochs": 0.125}, "search": SEARCH,
        "scheduler": scheduler, "run": run})


@pytest.mark.parametrize("scheduler, run, kept", [
    ({"type": "asha"}, {}, 1),
    ({"type": "hyperband"}, {"checkpoints_to_keep": 3}, 3),
    ({"type": "pbt", "perturbation_interval": 3, "mutations": ["learning_rate"]}, {}, None),
    # a cap is raised to two perturbation intervals (+2): a clone's checkpoint stays
    ({"type": "pbt", "perturbation_interval": 3, "mutations": ["learning_rate"]},
     {"checkpoints_to_keep": 4}, 8),
    ({"type": "pb2", "perturbation_interval": 1, "mutations": ["learning_rate"]},
     {"checkpoints_to_keep": 6}, 6),
])
def test_the_scheduler_decides_how_many_checkpoints_a_trial_keeps(scheduler, run, kept):
    assert checkpoints_to_keep(experiment(scheduler, **run)) == kept


class ToySettings(SchedulerSettings):
    """A population-based scheduler that exploits on its own rule (no interval)."""

    type: Literal["toy_population"] = "toy_population"


def test_a_population_scheduler_without_a_perturbation_interval_works(monkeypatch):
    toy = Scheduler(ToySettings, lambda settings, plan: None, population=True)
    monkeypatch.setitem(SCHEDULERS, "toy_population", toy)
    for run, kept in (({}, None), ({"checkpoints_to_keep": 3}, 3)):
        config = experiment({"type": "asha"}, **run)
        config = config.model_copy(update={"scheduler": ToySettings()})
        assert checkpoints_to_keep(config) == kept
