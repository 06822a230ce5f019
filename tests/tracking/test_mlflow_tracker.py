"""The MLflow tracker's own rules against a real local MLflow store (sqlite), driven the way
Tune drives it (setup, trial start, results, end): a PBT exploit becomes a tag, a point
re-reported after a restore is not logged twice, and a second driver (a resume) continues
the same runs."""

from __future__ import annotations

import json
import pickle
import re
import sys
from pathlib import Path

import pytest

from raytune_ft.tracking import _guard
from raytune_ft.tracking._mlflow import MlflowTracker

sys.path.insert(0, str(Path(__file__).parent))

from _helpers import exploit, tune_trial  # noqa: E402

OLD, NEW = {"learning_rate": 1e-4, "batch_size": 16}, {"learning_rate": 1.2e-4, "batch_size": 16}


def _result(iteration: int, samples: int, accuracy: float, config=OLD) -> dict:
    return {"training_iteration": iteration, "samples_seen": samples,
            "eval_accuracy": accuracy, "diverged": False, "lr": 1e-4, "config": config}


def _driver(uri: str, experiment_dir) -> MlflowTracker:
    tracker = MlflowTracker(uri, "units", str(experiment_dir), "units", 4,
                            {"metric": "eval_accuracy"})
    tracker = pickle.loads(pickle.dumps(tracker))  # as Tune stores and restores it
    tracker.setup()
    return tracker


def test_exploits_restores_and_a_resume_log_each_point_once(tmp_path):
    from mlflow import MlflowClient

    _guard.reset()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = tmp_path / "exp"
    experiment.mkdir()
    tracker = _driver(uri, experiment)
    trial, donor = tune_trial(experiment, "t_00000", OLD), tune_trial(experiment, "t_00001", NEW)
    tracker.on_trial_start(0, [], trial)
    tracker.on_trial_result(0, [], trial, _result(1, 100, 0.5))
    tracker.on_trial_result(0, [], trial, _result(2, 200, 0.6))
    # PBT decides on a result before the callbacks see it (or, with `synch: true`, on another
    # trial's later result): the tracker goes by the config each result trained with
    exploit(trial, donor, "checkpoint_000001", NEW)
    tracker.on_trial_result(0, [], trial, _result(3, 300, 0.65))
    # the clone restarts from its donor's checkpoint (200 samples) with the new settings
    tracker.on_trial_start(0, [], trial)
    tracker.on_trial_result(0, [], trial, _result(2, 200, 0.7, NEW))
    tracker.on_experiment_end([])  # the driver stops (Ctrl-C) with the trial unfinished

    resumed = _driver(uri, experiment)  # `raytune-ft resume`: a new driver
    resumed.on_trial_start(0, [], trial)  # from the donor's checkpoint again: no new exploit
    resumed.on_trial_result(0, [], trial, _result(2, 200, 0.7, NEW))  # re-reported: restored
    resumed.on_trial_result(0, [], trial, _result(3, 300, 0.8, NEW))
    trial.update_last_result(_result(3, 300, 0.8, NEW))
    resumed.on_trial_complete(0, [], trial)
    resumed.on_experiment_end([])
    assert _guard.not_logged() == []

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("units").experiment_id])
    assert len(runs) == 2  # the parent and the trial's run, once each
    child = next(r for r in runs if "mlflow.parentRunId" in r.data.tags)
    history = client.get_metric_history(child.info.run_id, "eval_accuracy")
    assert sorted((m.step, m.value) for m in history) == [
        (100, 0.5), (200, 0.6), (200, 0.7), (300, 0.65), (300, 0.8)]
    tag = json.loads(child.data.tags["pbt.exploit.1"])
    # the first result trained with the new settings, the donor's checkpoint and those
    # settings; once, over a resume
    assert tag == {"samples_seen": 200, "checkpoint": "train_trial_t_00001/checkpoint_000001",
                       "config": NEW}
    assert not any(key.startswith("pbt.exploit.2") for key in child.data.tags)
    assert child.data.tags["status"] == "stopped"  # 3 of 4 iterations: a scheduler's stop
    assert child.data.params == {"learning_rate": "0.0001", "batch_size": "16"}


def test_an_unreachable_server_is_one_failure_and_the_calls_return(tmp_path):
    _guard.reset()
    (tmp_path / "exp").mkdir()
    tracker = _driver("http://127.0.0.1:9", tmp_path / "exp")  # discard port: refused
    trial = tune_trial(tmp_path / "exp", "t_00000", {"learning_rate": 1e-4})
    for i in range(1, 4):
        tracker.on_trial_result(0, [], trial, _result(i, 100 * i, 0.5))
    tracker.on_experiment_end([])
    lines = _guard.not_logged()
    assert len(lines) == 1 and re.fullmatch(
        r"mlflow: not logged from the experiment's parent run on \(.+\); "
        r"skipped 1 the parent run, 3 results", lines[0]), lines
    _guard.reset()


@pytest.fixture(autouse=True)
def _fast_http(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
