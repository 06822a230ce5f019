"""run.max_concurrent_trials through the real Tuner, for every search_alg, the preset runs
(replay, confirm), PBT, and a resumed run whose errored and interrupted trials restart.

The trials are a small function trainable that logs when each attempt trains (start and
the end of every iteration, to a file: an attempt that raises reports nothing); the settings
are the ones `raytune-ft tune`, `replay`/`confirm` and `resume` build (runner.tune_settings,
runner.preset_settings, runner.restore_tuner). Each trial asks for a quarter CPU, so the
module's 2-CPU Ray could run 8 at once: only the limit keeps them apart.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from ray import tune

from raytune_ft.config import validate_config
from raytune_ft.tuning.runner import preset_settings, restore_tuner, tune_settings

ITERATIONS = 2
HOLD_S = 2.0  # how long the first attempt waits for a second one to start
SPACE = {"learning_rate": {"loguniform": [1e-5, 1e-3]}}


@pytest.fixture(scope="module", autouse=True)
def ray_for_module(ray_local):
    from ray import cloudpickle

    # `trains` lives in this test module, which Ray's workers cannot import: by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield


def trains(config):
    """Logs [trial key, attempt start, now] after each iteration; the trial whose key is
    `fail` raises in its first attempt, the one whose key is `interrupt` presses Ctrl-C in
    the driver in its first attempt and waits there to be stopped.

    The first attempt of a run (no `held` file beside the log) waits up to HOLD_S for a
    second attempt to start, so trials that may run side by side do, however long Ray takes
    to start their actors on a busy machine."""
    log, key = Path(config["log"]), config.get("k", config["learning_rate"])
    first = not (log.parent / f"ran_{key}").exists()
    (log.parent / f"ran_{key}").write_text("")
    started = time.time()
    (log.parent / f"start_{key}_{started}").write_text("")
    if not (log.parent / "held").exists():
        (log.parent / "held").write_text("")
        starts = len(list(log.parent.glob("start_*")))
        while time.time() < started + HOLD_S and len(list(log.parent.glob("start_*"))) == starts:
            time.sleep(0.05)
    for i in range(ITERATIONS):
        time.sleep(0.2)
        with log.open("a") as f:
            f.write(json.dumps([key, started, time.time()]) + "\n")
        if first and key == config.get("fail"):
            raise RuntimeError("the trial's first attempt fails")
        if first and key == config.get("interrupt") and i == 1:
            os.kill(config["driver"], signal.SIGINT)
            time.sleep(60)
        tune.report({"eval_accuracy": config["learning_rate"] * 100})


def spans(log: Path) -> list[tuple[float, float]]:
    """(start, end) of every attempt that trained, in start order."""
    attempts: dict[tuple, float] = {}
    for line in log.read_text().splitlines():
        key, started, now = json.loads(line)
        attempts[(str(key), started)] = max(now, attempts.get((str(key), started), now))
    return sorted((started, end) for (_, started), end in attempts.items())


def most_at_once(log: Path) -> int:
    events = sorted([(s, 1) for s, _ in spans(log)] + [(e, -1) for _, e in spans(log)],
                    key=lambda event: (event[0], event[1]))
    running = most = 0
    for _, change in events:
        running += change
        most = max(most, running)
    return most


def experiment(search_alg: dict, limit: int = 1, **sections):
    return validate_config({
        "name": "limit", "model": {"name": "m"}, "data": {"task": "sst2"},
        "train": {"max_epochs": ITERATIONS}, "search": sections.pop("search", SPACE),
        "search_alg": search_alg, "resources": {"cpus_per_trial": 0.25},
        "run": {"num_samples": 3, "max_concurrent_trials": limit, "verbose": 0,
                **sections.pop("run", {})}, **sections})


def run(tmp_path, config, space, tune_config=None, run_config=None) -> Path:
    log = tmp_path / "spans.jsonl"
    if tune_config is None:
        tune_config, run_config = tune_settings(config, str(tmp_path / "limit"))
    trainable = tune.with_resources(trains, {"cpu": 0.25})
    tune.Tuner(trainable, param_space={**space, "log": str(log)}, tune_config=tune_config,
               run_config=run_config).fit()
    return log


LOGUNIFORM = {"learning_rate": tune.loguniform(1e-5, 1e-3)}


@pytest.mark.parametrize("search_alg", [
    {"type": "random", "seed": 0},
    {"type": "tpe", "seed": 0, "n_initial_points": 2},
    {"type": "optuna", "seed": 0},
])
def test_one_trial_at_a_time_for_every_searcher(tmp_path, search_alg):
    # random: Ray ignored the limit for the variant generator raytune_ft hands it
    log = run(tmp_path, experiment(search_alg), LOGUNIFORM)
    assert len(spans(log)) == 3 and most_at_once(log) == 1, spans(log)


def test_one_trial_at_a_time_for_a_grid(tmp_path):
    grid = {"learning_rate": {"grid": [1e-5, 1e-4, 1e-3]}}
    config = experiment({"type": "grid"}, search=grid, run={"num_samples": 1})
    log = run(tmp_path, config, {"learning_rate": tune.grid_search([1e-5, 1e-4, 1e-3])})
    assert len(spans(log)) == 3 and most_at_once(log) == 1, spans(log)


def test_a_population_keeps_the_limit(tmp_path):
    # PBT/PB2 run on the variant generator (random or grid search)
    config = experiment({"type": "random", "seed": 0},
                        scheduler={"type": "pbt", "perturbation_interval": 1,
                                   "mutations": ["learning_rate"]})
    log = run(tmp_path, config, LOGUNIFORM)
    assert len(spans(log)) == 3 and most_at_once(log) == 1, spans(log)


def test_replay_and_confirm_run_their_presets_one_at_a_time(tmp_path):
    from raytune_ft.tuning.pbt_replay import SCHEDULE_KEY, MultiScheduleReplay, Schedule

    config = experiment({"type": "random", "seed": 0})
    points = [{"learning_rate": lr, SCHEDULE_KEY: rank} for rank, lr in
              enumerate([1e-5, 1e-4, 1e-3], start=1)]
    schedules = {p[SCHEDULE_KEY]: Schedule({"learning_rate": p["learning_rate"]})
                 for p in points}
    space, tune_config, run_config = preset_settings(
        config, str(tmp_path / "presets"), None, points,
        MultiScheduleReplay(schedules, (SCHEDULE_KEY, "log")))
    log = run(tmp_path, config, space, tune_config, run_config)
    assert len(spans(log)) == 3 and most_at_once(log) == 1, spans(log)


def test_a_resumed_run_restarts_its_errored_and_interrupted_trials_one_at_a_time(tmp_path):
    # Trial 0 fails, trial 2 is interrupted. Resumed, Tune requeues both at once, and the
    # errored one no longer counts as unfinished to the searcher: they ran side by side.
    config = experiment({"type": "grid"}, run={"num_samples": 1},
                        search={"learning_rate": {"grid": [1e-5, 1e-4, 1e-3, 1e-2]}})
    log = tmp_path / "spans.jsonl"
    tune_config, run_config = tune_settings(config, str(tmp_path / "limit"))
    space = {"k": tune.grid_search([0, 1, 2, 3]), "learning_rate": 1e-4, "log": str(log),
             "fail": 0, "interrupt": 2, "driver": os.getpid()}
    trainable = tune.with_resources(trains, {"cpu": 0.25})
    first = tune.Tuner(trainable, param_space=space, tune_config=tune_config,
                       run_config=run_config).fit()
    assert sorted((r.config["k"], r.error is not None) for r in first) == \
        [(0, True), (1, False), (2, False)]
    before = len(spans(log))
    (tmp_path / "held").unlink()  # the first attempt of the resumed run waits for another
    results = restore_tuner(str(tmp_path / "limit"), trainable).fit()
    assert sorted(r.config["k"] for r in results if not r.error) == [0, 1, 2, 3]
    assert len(spans(log)) - before == 3  # 0 and 2 again, 3 for the first time
    assert most_at_once(log) == 1, spans(log)


def test_the_header_warns_that_the_limit_bounds_a_population(tmp_path, tiny_bert, glue_dir):
    from support import experiment_yaml

    from raytune_ft.config import load_config
    from raytune_ft.tuning.runner import prepare

    scheduler = {"type": "pbt", "perturbation_interval": 1, "mutations": ["learning_rate"]}
    path = experiment_yaml(tmp_path / "pbt.yaml", tiny_bert, glue_dir, tmp_path / "results",
                           scheduler=scheduler, search_alg={"type": "random"},
                           run={"num_samples": 4, "max_concurrent_trials": 2})
    warnings = prepare(load_config(path)).warnings
    assert ("run.max_concurrent_trials 2 under pbt: at most 2 of the 4 trials are alive at "
            "once, so the population that exchanges weights has 2 members") in " ".join(warnings)
    alone = prepare(load_config(path, ["run.max_concurrent_trials=4"])).warnings
    assert not any("max_concurrent_trials" in w for w in alone)
