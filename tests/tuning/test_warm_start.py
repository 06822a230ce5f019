"""Warm starts: PBT/PB2 refused on either side, and where the prior came from kept in the
experiment record and shown in the report (no Ray, no training: records written here)."""

from __future__ import annotations

import json

import pytest

from raytune_ft.analysis._report import _warm_start_note
from raytune_ft.config import validate_config
from raytune_ft.errors import ConfigError
from raytune_ft.experiment import CONFIG_FILE, read_record, write_record
from raytune_ft.tuning.warm_start import Observations, load_observations

SEARCH = {"learning_rate": {"loguniform": [1e-5, 1e-3]}}
PBT = {"type": "pbt", "mutations": ["learning_rate"]}


def experiment(**extra):
    return validate_config({"name": "x", "model": {"name": "m"}, "data": {"task": "sst2"},
                            "search": SEARCH, **extra})


@pytest.mark.parametrize("kind", ["pbt", "pb2"])
def test_a_population_based_source_is_refused_naming_its_scheduler(tmp_path, kind):
    write_record(str(tmp_path), experiment(scheduler={**PBT, "type": kind}), {})
    with pytest.raises(ConfigError) as error:
        load_observations(experiment(search_alg={"type": "optuna"}), [str(tmp_path)])
    assert str(error.value) == (
        f"--warm-start {tmp_path}: its scheduler.type '{kind}' changed trials' "
        "hyperparameters mid-run, so a trial's result belongs to no one configuration; "
        "warm-start from runs whose scheduler.type is fifo, asha or hyperband")


def test_a_population_based_target_is_refused_naming_its_scheduler(tmp_path):
    target = experiment(scheduler=PBT)  # random search: the only kind PBT runs with
    with pytest.raises(ConfigError) as error:
        load_observations(target, [str(tmp_path)])  # refused before reading the folder
    assert str(error.value).startswith("--warm-start: scheduler.type 'pbt' picks and mutates "
                                       "its own configurations")
    assert "fifo, asha or hyperband" in str(error.value)


@pytest.mark.parametrize("alg", ["tpe", "optuna"])
def test_a_searcher_with_pbt_is_a_config_error(alg):
    # Ray's PopulationBasedTraining raises on the first trial otherwise (a traceback)
    with pytest.raises(ConfigError) as error:
        experiment(scheduler=PBT, search_alg={"type": alg})
    assert str(error.value) == (
        f"config: search_alg.type: '{alg}' cannot drive scheduler.type 'pbt', which picks "
        "and mutates its own configurations; use search_alg.type random or grid with it")


def test_the_sources_are_in_the_record_and_the_report(tmp_path):
    seen = Observations(points=[{"learning_rate": 1e-4}] * 3,
                        metrics=[{"eval_accuracy": 0.5}] * 3,
                        sources=["/r/first", "/r/second"], imported=[2, 1])
    write_record(str(tmp_path), experiment(), {"warm_start": seen.record()})
    _, record = read_record(str(tmp_path))  # the key is derived, not a config error
    assert record["warm_start"] == [{"experiment": "/r/first", "trials": 2},
                                    {"experiment": "/r/second", "trials": 1}]
    note = _warm_start_note(tmp_path)
    assert "Warm start: the searcher began with 3 earlier trials from /r/first (2 trials); " \
           "/r/second (1 trials)." in note
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / CONFIG_FILE).write_text(json.dumps(experiment().model_dump(mode="json")))
    assert _warm_start_note(plain) == ""
