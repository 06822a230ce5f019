"""Which metric a task is tuned on by default, and which metrics it may be tuned on."""

from __future__ import annotations

import pytest

from raytune_ft.config import DataConfig, validate_config


def _experiment(task: str, **extra) -> dict:
    return {"name": "t", "model": {"name": "all-MiniLM-L6-v2"}, "data": {"task": task}, **extra}


@pytest.mark.parametrize("task", ["cola", "CoLA"])
def test_cola_defaults_to_matthews_correlation(task):
    assert validate_config(_experiment(task)).metric == "eval_mcc"


def test_an_explicit_metric_stays_as_set():
    config = validate_config(_experiment("cola", metric="eval_accuracy"))
    assert config.metric == "eval_accuracy" and config.mode == "max"
    assert validate_config(_experiment("cola", metric="eval_loss", mode="min")).metric == \
        "eval_loss"


@pytest.mark.parametrize("task", ["sst2", "mrpc", "rte"])
def test_other_tasks_keep_accuracy(task):
    assert validate_config(_experiment(task)).metric == "eval_accuracy"


def test_a_data_model_instance_is_read_too():
    from raytune_ft.config import ExperimentConfig, ModelConfig

    config = ExperimentConfig(name="t", model=ModelConfig(name="m"), data=DataConfig(task="cola"))
    assert config.metric == "eval_mcc"
