"""The contract every registered component keeps, one test per registry entry: a task, a
scheduler or a tracker added as one module and one registry line passes these or is refused.

Its example settings validate inside an experiment and come back unchanged through the
experiment record; an unknown key in its section lists its own fields only; a scheduler
builds its Ray scheduler from the plan in under a second; a tracker says what it does in the
run header. Reading the registries and the assembled schema imports neither torch nor Ray.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from raytune_ft.errors import ConfigError
from raytune_ft.experiment import read_record, write_record
from raytune_ft.schedulers import SCHEDULERS, build_scheduler, scheduler_spec
from raytune_ft.schema import ExperimentConfig, validate_config
from raytune_ft.tasks import TASKS
from raytune_ft.tracking import TRACKERS, tracking_header

# What a scheduler's example needs around it: a space to mutate, two iterations.
AROUND = {"name": "c", "model": {"name": "m"}, "data": {"task": "sst2"},
          "train": {"max_epochs": 2, "eval_every_epochs": 1},
          "search": {"learning_rate": {"loguniform": [1e-5, 1e-3]}}}


def _round_trip(config: ExperimentConfig, folder) -> ExperimentConfig:
    write_record(str(folder), config, {"budget_samples": 1})
    return read_record(str(folder))[0]


def _refusal(raw: dict) -> str:
    with pytest.raises(ConfigError) as error:
        validate_config(raw)
    return str(error.value)


@pytest.mark.parametrize("name", list(TASKS))
def test_a_tasks_example_validates_and_round_trips_through_the_record(name, tmp_path):
    task = TASKS[name]
    config = validate_config({**AROUND, "data": task.example})
    assert type(config.data) is task.settings and config.data.kind == name
    assert _round_trip(config, tmp_path) == config


@pytest.mark.parametrize("name", list(TASKS))
def test_an_unknown_data_key_lists_the_tasks_own_fields(name):
    task = TASKS[name]
    message = _refusal({**AROUND, "data": {**task.example, "no_such_field": 1}})
    assert f"data.no_such_field: unknown key; allowed: " \
           f"{', '.join(task.settings.model_fields)}" in message


@pytest.mark.parametrize("name", list(TASKS))
def test_a_metric_of_another_task_is_refused_for_this_one(name):
    task = TASKS[name]
    own = {metric.name for metric in task.metrics}
    foreign = next(metric.name for other in TASKS.values() for metric in other.metrics
                   if metric.name not in own)
    message = _refusal({**AROUND, "data": task.example, "metric": foreign})
    assert f"metric: {foreign!r} is not reported by data.kind {name}" in message


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_a_schedulers_example_validates_and_round_trips_through_the_record(name, tmp_path):
    spec = SCHEDULERS[name]
    config = validate_config({**AROUND, "scheduler": spec.example})
    assert type(config.scheduler) is spec.settings and spec.name == name
    assert scheduler_spec(config) is spec
    assert _round_trip(config, tmp_path) == config


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_an_unknown_scheduler_key_lists_the_schedulers_own_fields(name):
    spec = SCHEDULERS[name]
    message = _refusal({**AROUND, "scheduler": {**spec.example, "no_such_field": 1}})
    assert f"scheduler.no_such_field: unknown key; allowed: " \
           f"{', '.join(spec.settings.model_fields)}" in message


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_a_scheduler_builds_from_the_plan_in_under_a_second(name):
    from ray.tune.schedulers import TrialScheduler

    config = validate_config({**AROUND, "scheduler": SCHEDULERS[name].example})
    build_scheduler(config.scheduler, config.plan())  # imports (Ray, PB2's scikit-learn) once
    started = time.perf_counter()
    built = build_scheduler(config.scheduler, config.plan())
    assert time.perf_counter() - started < 1.0
    assert isinstance(built, TrialScheduler)


@pytest.mark.parametrize("name", list(TRACKERS))
def test_a_trackers_example_validates_and_round_trips_through_the_record(name, tmp_path):
    spec = TRACKERS[name]
    config = validate_config({**AROUND, "tracking": {name: spec.example}})
    assert config.tracking.enabled() == [name]
    assert type(getattr(config.tracking, name)) is spec.settings
    assert _round_trip(config, tmp_path) == config


@pytest.mark.parametrize("name", list(TRACKERS))
def test_an_unknown_tracker_key_lists_the_trackers_own_fields(name):
    spec = TRACKERS[name]
    message = _refusal({**AROUND, "tracking": {name: {**spec.example, "no_such_field": 1}}})
    assert f"tracking.{name}.no_such_field: unknown key" in message
    if spec.settings.model_fields:
        assert message.endswith(f"allowed: {', '.join(spec.settings.model_fields)}")
    else:  # a switch: no empty list of allowed keys
        assert message.endswith(f"tracking.{name} takes no settings (`tracking.{name}: true` "
                                "switches it on)")


@pytest.mark.parametrize("section, value, names", [
    ("data", "sst2", ("kind", TASKS)), ("data", None, ("kind", TASKS)),
    ("scheduler", "asha", ("type", SCHEDULERS)), ("scheduler", 3, ("type", SCHEDULERS))])
def test_a_component_section_that_is_not_a_mapping_says_so(section, value, names):
    field, registry = names
    message = _refusal({**AROUND, section: value})
    assert message.endswith(f"{section}: must be a mapping with {field}: one of "
                            f"{', '.join(registry)}; got {value!r}"
                            + (" (write scheduler: {type: asha})" if value == "asha" else ""))


@pytest.mark.parametrize("name", list(TRACKERS))
def test_a_tracker_says_what_it_does_in_the_run_header(name):
    config = validate_config({**AROUND, "tracking": {name: TRACKERS[name].example}})
    line = tracking_header(config.tracking)
    assert line.startswith(name) and len(line) > len(name)


def test_the_registries_and_the_schema_import_without_torch_or_ray():
    code = ("import sys, raytune_ft.schema; print(sorted(m for m in ('torch', 'ray', "
            "'mlflow', 'wandb', 'transformers', 'optuna') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={**os.environ, "PYTHONPATH": ""})
    assert done.stdout.strip() == "[]"
