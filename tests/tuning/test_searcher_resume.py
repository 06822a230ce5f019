"""An errored trial that `resume` restarts and finishes is learned by the searcher with its
value (the Optuna study; hyperopt's TPE trials), through the real Tuner and `Tuner.restore`
(the product's settings, `tests/synthetic.py`'s trainable) and the searcher state Tune saved
with the experiment; with and without `run.max_concurrent_trials`."""

from __future__ import annotations

import pytest
import synthetic

from raytune_ft.schema import validate_config


@pytest.fixture(scope="module")
def ray_by_value(ray_local):
    synthetic.by_value()
    yield


def saved_searcher(experiment_dir) -> dict:
    """The newest searcher state Tune saved (what a further resume reads)."""
    from ray import cloudpickle

    newest = sorted(experiment_dir.glob("searcher-state-*.pkl"))[-1]
    return cloudpickle.loads(newest.read_bytes())


def learned(search_alg: str, experiment_dir) -> list[tuple[float, float]]:
    """(learning rate, value) of every trial the saved searcher learned a value from."""
    state = saved_searcher(experiment_dir)
    if search_alg == "optuna":
        import optuna

        return [(t.params["learning_rate"], t.value) for t in state["_ot_study"].trials
                if t.state == optuna.trial.TrialState.COMPLETE]
    from hyperopt import JOB_STATE_DONE

    return [(doc["misc"]["vals"]["learning_rate"][0], -doc["result"]["loss"])
            for doc in state["_hpopt_trials"]._dynamic_trials if doc["state"] == JOB_STATE_DONE]


def failed(search_alg: str, experiment_dir) -> int:
    """How many trials the saved searcher holds as failed."""
    state = saved_searcher(experiment_dir)
    if search_alg == "optuna":
        import optuna

        return sum(t.state == optuna.trial.TrialState.FAIL for t in state["_ot_study"].trials)
    from hyperopt import JOB_STATE_ERROR

    return sum(doc["state"] == JOB_STATE_ERROR for doc in state["_hpopt_trials"]._dynamic_trials)


@pytest.mark.parametrize("search_alg", [{"type": "optuna", "sampler": "tpe", "seed": 0},
                                        {"type": "tpe", "seed": 0, "n_initial_points": 2}])
@pytest.mark.parametrize("concurrent", [None, 1])
def test_an_errored_trial_finished_by_resume_is_learned_by_the_searcher(
        search_alg, concurrent, tmp_path, ray_by_value):
    config = validate_config({
        "name": "study", "model": {"name": "m"}, "data": {"task": "sst2"},
        "metric": "eval_accuracy", "mode": "max",
        "train": {"max_epochs": 1, "eval_every_epochs": 0.25},  # 4 iterations
        "search": {"learning_rate": {"loguniform": [1e-5, 1e-3]}},
        "scheduler": {"type": "fifo"}, "search_alg": search_alg,
        "run": {"num_samples": 3, "verbose": 0, "max_concurrent_trials": concurrent}})
    kind = search_alg["type"]
    directory = tmp_path / "study"
    marker = tmp_path / "fail"
    marker.touch()
    tuner = synthetic.tuner(config, directory, checkpoint_every=1,
                            fail_once=[3, str(marker)])
    first = tuner.fit()
    assert len(first.errors) == 1 and not marker.exists()
    errored = next(r for r in first if r.error is not None)
    assert failed(kind, directory) == 1 and len(learned(kind, directory)) == 2

    resumed = synthetic.restored(directory).fit()
    assert not resumed.errors
    done = next(r for r in resumed if r.metrics["trial_id"] == errored.metrics["trial_id"])
    assert done.metrics["training_iteration"] == 4  # it went on from its checkpoint
    values = learned(kind, directory)
    assert len(values) == 3, values
    assert (done.config["learning_rate"], done.metrics["eval_accuracy"]) in values
