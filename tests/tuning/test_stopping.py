"""run.stop: each rule ends a real Tune run early and records why (stop_reason.json).

The trials are a small function trainable reporting set values, so when each rule must
fire is known exactly; the searcher, its one-trial-at-a-time limit and the stopper are the
ones `raytune-ft tune` builds (runner.tune_settings and runner.search_settings: the stopper is
Tune's stopper and a callback).
"""

from __future__ import annotations

import json

import pytest
from ray import tune

from raytune_ft.config import validate_config
from raytune_ft.experiment import STOP_FILE
from raytune_ft.tuning.runner import restore_tuner, search_settings, tune_settings
from raytune_ft.tuning.stopping import read_stop_reason

ITERATIONS = 4


def reports(config):
    """Reports `peak` x i/4 at iterations i = 1..4 (its best is `peak`, at the end)."""
    for i in range(1, ITERATIONS + 1):
        tune.report({"eval_accuracy": config["peak"] * i / ITERATIONS})


def experiment(stop: dict, cpus: float = 1.0):
    """Grid search over `peak` (the trainable's key; the grid here only passes validation),
    one trial at a time, with the stop rules `stop`."""
    return validate_config({
        "name": "stop", "model": {"name": "m"}, "data": {"task": "sst2"},
        "train": {"max_epochs": ITERATIONS},
        "search": {"learning_rate": {"grid": [1e-5, 1e-4]}}, "search_alg": {"type": "grid"},
        "resources": {"cpus_per_trial": cpus},
        "run": {"num_samples": 1, "max_concurrent_trials": 1, "stop": stop, "verbose": 0}})


def tuner(tmp_path, config, trainable, space: dict):
    """The Tuner `raytune-ft tune` would build for `config`, around `trainable`, and its
    stopper."""
    experiment = str(tmp_path / "stop")
    tune_config, run_config = tune_settings(config, experiment)
    tune_config, run_config = search_settings(config, experiment, tune_config, run_config)
    return tune.Tuner(trainable, param_space=space, tune_config=tune_config,
                      run_config=run_config), run_config.stop


def run(tmp_path, stop: dict, peaks: list[float], cpus: float = 1.0):
    search, _ = tuner(tmp_path, experiment(stop, cpus), reports,
                      {"peak": tune.grid_search(peaks)})
    results = search.fit()
    ran = [r for r in results if r.metrics]
    return ran, read_stop_reason(str(tmp_path / "stop"))


@pytest.fixture(scope="module", autouse=True)
def ray_for_module(ray_local):
    import sys

    from ray import cloudpickle

    # `reports` lives in this test module, which Ray's workers cannot import: by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield


def test_plateau_stops_after_patience_finished_trials_without_gain(tmp_path):
    # bests 0.5, 0.6 (a gain), 0.605 (< min_delta 0.01), 0.6: two without gain -> stop
    ran, reason = run(tmp_path, {"plateau": {"patience": 2, "min_delta": 0.01}},
                      [0.5, 0.6, 0.605, 0.6, 0.9, 0.95])
    assert reason["rule"] == "plateau" and reason["finished_trials"] == 4
    assert "did not improve by more than 0.01 over the last 2 finished trials" in \
        reason["detail"]
    assert sorted(r.config["peak"] for r in ran) == [0.5, 0.6, 0.6, 0.605]  # 0.9 never ran
    assert all(r.metrics["training_iteration"] == ITERATIONS for r in ran)


def test_target_stops_the_run_when_a_trial_reaches_it(tmp_path):
    # the second trial reports 0.9 x 3/4 = 0.675 >= 0.65 at its third iteration
    ran, reason = run(tmp_path, {"target": 0.65}, [0.5, 0.9, 1.0])
    assert reason["rule"] == "target"
    assert "eval_accuracy=0.675, reaching run.stop.target 0.65" in reason["detail"]
    assert [r.config["peak"] for r in ran] == [0.5, 0.9]
    assert ran[1].metrics["training_iteration"] == 3  # stopped before its budget's end


def test_max_device_hours_stops_the_run_at_the_cap(tmp_path):
    # 4 CPUs per trial make each reported second count 4 device-seconds
    ran, reason = run(tmp_path, {"max_device_hours": 1e-9}, [0.5, 0.6, 0.7], cpus=4.0)
    assert reason["rule"] == "max_device_hours" and reason["device_hours"] >= 1e-9
    assert len(ran) == 1 and ran[0].metrics["training_iteration"] == 1
    stopped = json.loads((tmp_path / "stop" / STOP_FILE).read_text())
    assert stopped == reason


@pytest.mark.slow  # the control: ~12 s for what the three tests above imply
def test_without_a_rule_firing_every_trial_runs_its_budget(tmp_path):
    ran, reason = run(tmp_path, {"target": 2.0}, [0.5, 0.6])
    assert reason is None and len(ran) == 2
    assert all(r.metrics["training_iteration"] == ITERATIONS for r in ran)


def interrupts_once(config):
    """`reports`, except that the trial with peak `stop_at` presses Ctrl-C in the driver the
    first time it starts (a marker file remembers it), and waits there to be stopped."""
    import os
    import signal
    import time
    from pathlib import Path

    marker = Path(config["marker"])
    if config["peak"] == config["stop_at"] and not marker.exists():
        marker.write_text("interrupted")
        os.kill(config["driver"], signal.SIGINT)
        time.sleep(60)
    reports(config)


def test_the_rules_continue_after_a_resume(tmp_path):
    # bests 0.5, 0.6 (a gain), then Ctrl-C during 0.605. Resumed, 0.605 and 0.6 are the 1st
    # and 2nd finished trials without gain: the plateau rule fires. A stopper that forgot
    # its counts would take 0.605 as its first best and count only 0.6 without gain.
    import os

    config = experiment({"plateau": {"patience": 2, "min_delta": 0.01}})
    experiment_dir = tmp_path / "stop"
    space = {"peak": tune.grid_search([0.5, 0.6, 0.605, 0.6]), "stop_at": 0.605,
             "marker": str(tmp_path / "interrupted"), "driver": os.getpid()}
    search, stopper = tuner(tmp_path, config, interrupts_once, space)
    first = search.fit()
    done = [r.config["peak"] for r in first if (r.metrics or {}).get("eval_accuracy")]
    assert sorted(done) == [0.5, 0.6] and read_stop_reason(str(experiment_dir)) is None
    saved = stopper.get_state()
    assert (saved["finished"], saved["best"], saved["without_gain"]) == (2, 0.6, 0)
    # the resumed run's stopper is the one in tuner.pkl, as `raytune-ft resume` gets it
    restore_tuner(str(experiment_dir), interrupts_once).fit()
    reason = read_stop_reason(str(experiment_dir))
    assert reason is not None and reason["rule"] == "plateau"
    assert reason["finished_trials"] == 4 and "the best eval_accuracy (0.6)" in reason["detail"]
    assert reason["device_hours"] > saved["device_hours"] > 0  # counted on, not anew
