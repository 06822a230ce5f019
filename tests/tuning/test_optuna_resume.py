"""An errored trial that `resume` restarts and finishes is in the Optuna study with its value,
through the real Tuner and `Tuner.restore` (the product's settings, `tests/synthetic.py`'s
trainable) and the searcher state Tune saved with the experiment."""

from __future__ import annotations

import pytest
import synthetic

from raytune_ft.config import validate_config


@pytest.fixture(scope="module")
def ray_by_value(ray_local):
    synthetic.by_value()
    yield


def saved_study(experiment_dir):
    """The study of the newest searcher state Tune saved (what a further resume reads)."""
    from ray import cloudpickle

    newest = sorted(experiment_dir.glob("searcher-state-*.pkl"))[-1]
    return cloudpickle.loads(newest.read_bytes())["_ot_study"]


@pytest.mark.parametrize("concurrent", [None, 1])
def test_an_errored_trial_finished_by_resume_is_complete_in_the_study(
        concurrent, tmp_path, ray_by_value):
    import optuna

    config = validate_config({
        "name": "study", "model": {"name": "m"}, "data": {"task": "sst2"},
        "metric": "eval_accuracy", "mode": "max",
        "train": {"max_epochs": 1, "eval_every_epochs": 0.25},  # 4 iterations
        "search": {"learning_rate": {"loguniform": [1e-5, 1e-3]}},
        "scheduler": {"type": "fifo"},
        "search_alg": {"type": "optuna", "sampler": "tpe", "seed": 0},
        "run": {"num_samples": 3, "verbose": 0, "max_concurrent_trials": concurrent}})
    directory = tmp_path / "study"
    marker = tmp_path / "fail"
    marker.touch()
    tuner = synthetic.tuner(config, directory, checkpoint_every=1,
                            fail_once=[3, str(marker)])
    first = tuner.fit()
    assert len(first.errors) == 1 and not marker.exists()
    failed = next(r for r in first if r.error is not None)
    states = {t.state for t in saved_study(directory).trials}
    assert optuna.trial.TrialState.FAIL in states

    resumed = synthetic.restored(directory).fit()
    assert not resumed.errors
    done = next(r for r in resumed if r.metrics["trial_id"] == failed.metrics["trial_id"])
    assert done.metrics["training_iteration"] == 4  # it went on from its checkpoint
    study = saved_study(directory)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3, [(t.number, t.state) for t in study.trials]
    learned = [t for t in complete if t.user_attrs.get("ray_trial_id") == done.metrics["trial_id"]]
    assert len(learned) == 1
    assert learned[0].params == {"learning_rate": done.config["learning_rate"]}
    assert learned[0].value == done.metrics["eval_accuracy"]
