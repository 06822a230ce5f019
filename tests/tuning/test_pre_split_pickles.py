"""An experiment started before the component split (#26) still resumes: `Tuner.restore`
unpickles its `tuner.pkl`, which names every class of raytune_ft it holds by the module path
it had then. PBT's scheduler was `raytune_ft.tuning.population.RescuePBT`, PB2's
`raytune_ft.tuning.search.LogScalePB2` with `StayInDomain` and `Range` beside it; they now
live in `raytune_ft.schedulers` and the old paths forward to them.

The fixtures under `data/pre26/` were written by the code of commit 0e31205 (the last before
the split): `git worktree add /tmp/old0e3 0e31205`, then in `tests/tuning/data/pre26/`,
`PYTHONPATH=/tmp/old0e3 python write.py` with this `write.py`:

    import ray.cloudpickle as pickle
    from raytune_ft.config import validate_config
    from raytune_ft.plan import plan_experiment
    from raytune_ft.tuning.runner import search_settings, tune_settings
    from raytune_ft.tuning.scheduler_state import resumable
    from raytune_ft.tuning.schedulers import build_scheduler

    for kind, alg in (("pbt", "random"), ("pb2", "random"), ("asha", "tpe"),
                      ("hyperband", "optuna")):
        scheduler = {"type": kind, **({"mutations": ["learning_rate"]} if kind[0] == "p"
                                      else {})}
        config = validate_config({
            "name": kind, "model": {"name": "m"}, "data": {"task": "sst2"},
            "train": {"max_epochs": 2, "eval_every_epochs": 0.5},
            "search": {"learning_rate": {"loguniform": [1e-5, 1e-3]}},
            "scheduler": scheduler, "search_alg": {"type": alg},
            "run": {"max_concurrent_trials": 2, "stop": {"target": 0.9,
                    "max_device_hours": 1, "plateau": {"patience": 3}}},
            "tracking": {"tensorboard": True,
                         "mlflow": {"tracking_uri": "sqlite:////tmp/pre26/m.db"},
                         "wandb": {"project": "p", "mode": "offline"}}})
        plan = plan_experiment(config, 1000)
        wrapped, state = resumable(build_scheduler(config, plan))
        with open(f"{kind}_scheduler.pkl", "wb") as f:
            pickle.dump({"scheduler": wrapped, "state": state}, f)
        tune_config, run_config = search_settings(
            config, f"/tmp/pre26/{kind}", *tune_settings(config, f"/tmp/pre26/{kind}", plan))
        with open(f"{kind}_settings.pkl", "wb") as f:
            pickle.dump({"tune_config": tune_config, "run_config": run_config}, f)

`*_scheduler.pkl` is the scheduler as `tuner.pkl` holds it (with its snapshot callback);
`*_settings.pkl` is everything else of raytune_ft that `tuner.pkl` holds: the searcher
(variant generator, hyperopt TPE, Optuna), the running limit, the result loggers, the three
trackers and the `run.stop` stopper.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ray import cloudpickle

import raytune_ft.schedulers as schedulers
from raytune_ft.schema import validate_config
from raytune_ft.tuning.scheduler_state import resumable

DATA = Path(__file__).parent / "data" / "pre26"


def _current(kind: str):
    """The scheduler the current code builds for the experiment the fixture was written for."""
    scheduler = {"type": kind, "mutations": ["learning_rate"]}
    config = validate_config({
        "name": kind, "model": {"name": "m"}, "data": {"task": "sst2"},
        "train": {"max_epochs": 2, "eval_every_epochs": 0.5},
        "search": {"learning_rate": {"loguniform": [1e-5, 1e-3]}}, "scheduler": scheduler})
    wrapped, _ = resumable(schedulers.build_scheduler(config.scheduler, config.plan(1000)))
    return wrapped._inner


@pytest.mark.parametrize("kind, name, explore", [("pbt", "RescuePBT", "_custom_explore_fn"),
                                                 ("pb2", "LogScalePB2", "_after_explore")])
def test_a_population_scheduler_pickled_before_the_split_loads_as_the_current_class(
        kind, name, explore):
    loaded = cloudpickle.loads((DATA / f"{kind}_scheduler.pkl").read_bytes())
    inner = loaded["scheduler"]._inner
    assert type(inner) is getattr(schedulers, name)
    assert set(vars(inner)) == set(vars(_current(kind)))  # the state the current code reads
    keep_inside = getattr(inner, explore)
    assert isinstance(keep_inside, schedulers.StayInDomain)
    assert keep_inside({"learning_rate": 0.5})["learning_rate"] == pytest.approx(1e-3)


@pytest.mark.parametrize("kind", ["pbt", "pb2", "asha", "hyperband"])
def test_everything_else_a_pre_split_tuner_pkl_holds_loads(kind):
    loaded = cloudpickle.loads((DATA / f"{kind}_settings.pkl").read_bytes())
    tune_config, run_config = loaded["tune_config"], loaded["run_config"]
    ours = [type(obj).__module__ for obj in (tune_config.scheduler, tune_config.search_alg,
                                             run_config.stop, *run_config.callbacks)]
    assert sum(module.startswith("raytune_ft.") for module in ours) >= 8
    assert type(tune_config.scheduler._inner._inner).__name__ == {
        "pbt": "RescuePBT", "pb2": "LogScalePB2", "asha": "AsyncHyperBandScheduler",
        "hyperband": "HyperBandScheduler"}[kind]
