"""An experiment started before the component split (#26) still resumes: `Tuner.restore`
unpickles its `tuner.pkl`, which names every class of raytune_ft it holds by the module path
it had then. PBT's scheduler was `raytune_ft.tuning.population.RescuePBT`, PB2's
`raytune_ft.tuning.search.LogScalePB2` with `StayInDomain` and `Range` beside it; they now
live in `raytune_ft.schedulers` and the old paths forward to them.

`data/pre26/<kind>_tuner.pkl` is the `tuner.pkl` that the code of commit 0e31205 (the last
before the split) wrote for an experiment under each scheduler, with a searcher of each kind
(variant generator, hyperopt TPE, Optuna), the running limit, the result loggers, the three
trackers and the `run.stop` stopper: `git worktree add /tmp/old0e3 0e31205`, then
`PYTHONPATH=/tmp/old0e3 python write.py` with this `write.py` (Tuner() writes tuner.pkl):

    import shutil
    from ray import tune
    from raytune_ft.config import validate_config
    from raytune_ft.plan import plan_experiment
    from raytune_ft.tuning.runner import search_settings, tune_settings
    from raytune_ft.tuning.search import param_space

    def train_trial(config):  # the product's trainable is a function of this name
        pass

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
        folder = f"/tmp/pre26/{kind}"
        tune_config, run_config = search_settings(config, folder,
                                                  *tune_settings(config, folder, plan))
        tune.Tuner(train_trial, param_space=param_space(config, plan),
                   tune_config=tune_config, run_config=run_config)
        shutil.copy(f"{folder}/tuner.pkl", f"{kind}_tuner.pkl")
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import raytune_ft.schedulers as schedulers
from raytune_ft.schema import validate_config
from raytune_ft.tuning.scheduler_state import resumable

DATA = Path(__file__).parent / "data" / "pre26"


def train_trial(config):  # the name the pre-split experiment's trainable had
    pass


def restored(kind: str, tmp_path: Path):
    """`Tuner.restore` of the pre-split experiment folder (its tuner.pkl): the restored
    TuneConfig and RunConfig."""
    from ray import tune

    folder = tmp_path / kind
    folder.mkdir()
    shutil.copy(DATA / f"{kind}_tuner.pkl", folder / "tuner.pkl")
    tuner = tune.Tuner.restore(str(folder), train_trial, resume_unfinished=True,
                               resume_errored=True)
    return tuner._local_tuner._tune_config, tuner._local_tuner.get_run_config()


def _current(kind: str):
    """The scheduler the current code builds for the experiment the fixture was written for."""
    config = validate_config({
        "name": kind, "model": {"name": "m"}, "data": {"task": "sst2"},
        "train": {"max_epochs": 2, "eval_every_epochs": 0.5},
        "search": {"learning_rate": {"loguniform": [1e-5, 1e-3]}},
        "scheduler": {"type": kind, "mutations": ["learning_rate"]}})
    wrapped, _ = resumable(schedulers.build_scheduler(config.scheduler, config.plan(1000)))
    return wrapped._inner


@pytest.mark.parametrize("kind, name, explore", [("pbt", "RescuePBT", "_custom_explore_fn"),
                                                 ("pb2", "LogScalePB2", "_after_explore")])
def test_a_pre_split_population_experiment_restores_with_the_current_scheduler(
        kind, name, explore, tmp_path):
    tune_config, _ = restored(kind, tmp_path)
    inner = tune_config.scheduler._inner._inner  # RunningLimit(Resumable(scheduler))
    assert type(inner) is getattr(schedulers, name)
    assert set(vars(inner)) == set(vars(_current(kind)))  # the state the current code reads
    keep_inside = getattr(inner, explore)
    assert isinstance(keep_inside, schedulers.StayInDomain)
    assert keep_inside({"learning_rate": 0.5})["learning_rate"] == pytest.approx(1e-3)


@pytest.mark.parametrize("kind, scheduler, searcher", [
    ("pbt", "RescuePBT", "BasicVariantGenerator"),
    ("pb2", "LogScalePB2", "BasicVariantGenerator"),
    ("asha", "AsyncHyperBandScheduler", "ConcurrencyLimiter"),  # around hyperopt TPE
    ("hyperband", "HyperBandScheduler", "MultiObjectiveOptuna")])
def test_everything_a_pre_split_tuner_pkl_holds_restores(kind, scheduler, searcher, tmp_path):
    tune_config, run_config = restored(kind, tmp_path)
    assert type(tune_config.scheduler._inner._inner).__name__ == scheduler
    assert type(tune_config.search_alg).__name__ == searcher
    callbacks = {type(c).__name__ for c in run_config.callbacks}
    assert {"JsonResultLogger", "CsvResultLogger", "SchedulerState", "TensorboardTracker",
            "MlflowTracker", "WandbTracker", "SearchStopper"} <= callbacks
    assert type(run_config.stop).__name__ == "SearchStopper"
