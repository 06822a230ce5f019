"""The W&B tracker's own rules against real wandb offline run files, driven the way Tune drives
it (setup, trial start, results, end): one run per trial, a PBT exploit updates the config and
is counted, a point re-reported after a restore is not logged twice, a second driver (a
resume) continues the same run, and a run is finished even after W&B failed."""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

import pytest

from raytune_ft.tracking import _guard
from raytune_ft.tracking._wandb import WandbTracker

sys.path.insert(0, str(Path(__file__).parent))

from _helpers import exploit, tune_trial  # noqa: E402
from wandb_records import history, records, run_info, summary  # noqa: E402

OLD, NEW = {"learning_rate": 1e-4, "batch_size": 16}, {"learning_rate": 1.2e-4, "batch_size": 16}

def _result(iteration: int, samples: int, accuracy: float, config=OLD) -> dict:
    return {"training_iteration": iteration, "samples_seen": samples,
            "eval_accuracy": accuracy, "diverged": False, "config": config}


def _driver(experiment_dir: Path) -> WandbTracker:
    tracker = WandbTracker("units", "exp", "offline", None, str(experiment_dir), 4)
    tracker = pickle.loads(pickle.dumps(tracker))  # as Tune stores and restores it
    tracker.setup()
    return tracker


def _runs(tmp_path: Path, trial_id: str) -> list[Path]:
    return sorted((tmp_path / "wandb").glob(f"offline-run-*-{trial_id}/run-{trial_id}.wandb"))


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    _guard.reset()
    yield
    _guard.reset()


def test_exploits_restores_and_a_resume_log_each_point_once(tmp_path):
    experiment = tmp_path / "exp"
    experiment.mkdir()
    tracker = _driver(experiment)
    trial, donor = tune_trial(experiment, "t_00000", OLD), tune_trial(experiment, "t_00001", NEW)
    tracker.on_trial_start(0, [], trial)
    tracker.on_trial_result(0, [], trial, _result(1, 100, 0.5))
    tracker.on_trial_result(0, [], trial, _result(2, 200, 0.6))
    tracker.on_trial_result(0, [], trial, _result(3, 300, 0.65))
    # PBT with `synch: true` exploits it later, on another trial's result (the MLflow test
    # has the asynchronous order: the config changes before its own result is logged)
    exploit(trial, donor, "checkpoint_000001", NEW)
    # the clone restarts from its donor's checkpoint (200 samples) with the new settings
    tracker.on_trial_start(0, [], trial)
    tracker.on_trial_result(0, [], trial, _result(2, 200, 0.7, NEW))
    tracker.on_experiment_end([])  # the driver stops (Ctrl-C) with the trial unfinished

    time.sleep(1.1)  # offline run folders are named to the second: a resume comes later
    resumed = _driver(experiment)  # `raytune-ft resume`: a new driver
    resumed.on_trial_start(0, [], trial)  # from the donor's checkpoint again: no new exploit
    resumed.on_trial_result(0, [], trial, _result(2, 200, 0.7, NEW))  # re-reported: restored
    resumed.on_trial_result(0, [], trial, _result(3, 300, 0.8, NEW))
    trial.update_last_result(_result(3, 300, 0.8, NEW))
    resumed.on_trial_complete(0, [], trial)
    resumed.on_experiment_end([])
    assert _guard.not_logged() == []

    first, second = _runs(tmp_path, "t_00000")  # the same run id, written twice
    assert run_info(first).run_id == run_info(second).run_id == "t_00000"
    logged = [(int(row["samples_seen"]), float(row["eval_accuracy"]))
              for path in (first, second) for row in history(path)]
    assert logged == [(100, 0.5), (200, 0.6), (300, 0.65), (200, 0.7), (300, 0.8)]
    assert json.loads(summary(first)["pbt_exploits"]) == 1
    assert "pbt_exploits" not in summary(second)  # no second exploit after the resume
    assert json.loads(summary(second)["status"]) == "stopped"  # 3 of 4 iterations
    configs = {}
    for path in (first, second):  # the config as last updated
        for record in records(path):
            kind = record.WhichOneof("record_type")
            if kind in ("config", "run"):
                items = record.config.update if kind == "config" else record.run.config.update
                configs.update({item.key: json.loads(item.value_json) for item in items})
    assert configs["learning_rate"] == NEW["learning_rate"]


def test_a_run_is_finished_after_wandb_failed(tmp_path):
    (tmp_path / "exp").mkdir()
    tracker = _driver(tmp_path / "exp")
    trial = tune_trial(tmp_path / "exp", "t_00001", OLD)
    tracker.on_trial_start(0, [], trial)
    tracker.on_trial_result(0, [], trial, _result(1, 100, 0.5))
    tracker._worker.submit("results", "a result", _fail)  # W&B fails after the run opened
    tracker.on_trial_result(0, [], trial, _result(2, 200, 0.6))  # skipped from then on
    trial.update_last_result(_result(4, 400, 0.7))
    tracker.on_trial_complete(0, [], trial)
    tracker.on_experiment_end([])
    lines = _guard.not_logged()
    assert len(lines) == 1 and "skipped 2 results" in lines[0], lines
    (path,) = _runs(tmp_path, "t_00001")
    assert [int(row["samples_seen"]) for row in history(path)] == [100]
    assert json.loads(summary(path)["status"]) == "terminated"  # finished all the same


def _fail() -> None:
    raise ConnectionError("W&B is down")
