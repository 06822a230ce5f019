"""The trial plan: the budget formula and evaluation points exactly as the loop had them,
accumulation as the header printed it, one plan in the record that analysis reads."""

from __future__ import annotations

import json
import math

import pytest

from raytune_ft.config import TrainConfig, evaluation_count
from raytune_ft.errors import ConfigError, RaytuneFtError
from raytune_ft.plan import accumulation_steps, trial_budget
from raytune_ft.schema import validate_config
from raytune_ft.tasks import get_task
from raytune_ft.training.batching import micro_batches


def old_points(max_epochs: float, every: float, n_train: int) -> list[int]:
    """FineTuneLoop.evaluation_point before the plan, for k = 1..evaluations."""
    total, count = round(max_epochs * n_train), evaluation_count(max_epochs, every)
    return [total if k >= count else min(total, round(k * every * n_train))
            for k in range(1, count + 1)]


CASES = [(3, 0.25, 67349), (2, 0.5, 256), (1, 0.125, 256), (1, 0.3, 100), (2.5, 1.0, 3668),
         (1, 0.25, 1), (0.5, 0.2, 7), (1, 1 / 3, 10), (10, 0.01, 99)]


@pytest.mark.parametrize("max_epochs, every, n_train", CASES)
def test_budget_is_the_loops_old_arithmetic(max_epochs, every, n_train):
    budget = trial_budget(max_epochs, every, n_train)
    points = old_points(max_epochs, every, n_train)
    assert budget.total_samples == round(max_epochs * n_train)
    assert list(budget.evaluation_points) == points
    assert budget.iterations == evaluation_count(max_epochs, every)
    assert [budget.evaluation_point(k) for k in range(1, len(points) + 3)] == \
        [*points, budget.total_samples, budget.total_samples]
    for seen in range(budget.total_samples + 1):
        done = sum(1 for p in points if p <= seen)  # the old evaluations_done
        assert budget.evaluations_done(seen) == done
        if seen < budget.total_samples:  # the old run_interval target
            assert budget.next_point(seen) == next(p for p in points if p > seen)


def test_accumulation_is_one_formula_for_the_header_and_the_loop():
    for batch in range(1, 70):
        for micro in (1, 3, 8, 16, 32):
            assert accumulation_steps(batch, micro) == math.ceil(batch / micro) == \
                len(micro_batches(list(range(batch)), micro))


def experiment(**sections):
    return validate_config({"name": "x", "model": {"name": "m"}, "data": {"task": "sst2"},
                            **sections})


def test_the_plan_without_data_has_everything_but_the_budget():
    config = experiment(
        train={"max_epochs": 2, "eval_every_epochs": 0.5, "max_micro_batch": 8},
        search={"learning_rate": {"loguniform": [1e-5, 1e-3]},
                "weight_decay": {"qloguniform": [0.001, 0.1, 0.001]},
                "batch_size": {"randint": [8, 40]},
                "max_micro_batch": {"choice": [8, 16]}})
    plan = config.plan()
    assert plan.budget is None and plan.iterations == config.iterations == 4
    assert plan.log_scaled == ("learning_rate", "weight_decay")
    assert plan.space == config.space()
    assert plan.micro_batch == (8, 16) and plan.largest_batch == 40
    (option,) = plan.batches
    assert not option.phased and [(s.low, s.high, s.accumulation) for s in option.spans] == \
        [(8, 40, (1, 5))]
    with_data = config.plan(100)
    assert with_data.budget == trial_budget(2, 0.5, 100)
    record = json.loads(json.dumps(with_data.record()))
    assert record["budget"] == {"n_train": 100, "total_samples": 200,
                                "evaluation_points": [50, 100, 150, 200]}
    assert record["space"]["learning_rate"] == {"kind": "loguniform", "args": [1e-5, 1e-3]}


def test_a_constant_under_search_sets_the_budget_every_trial_trains_with():
    # trial_hyperparameters puts the constant in force, so the plan and the schedulers'
    # iterations follow it (they used train.max_epochs while the trials trained 1 epoch)
    from raytune_ft.schema import trial_hyperparameters

    config = experiment(train={"max_epochs": 3, "eval_every_epochs": 0.5},
                        search={"max_epochs": 1})
    hp = trial_hyperparameters(config, {"max_epochs": 1})
    plan = config.plan(64)
    assert config.iterations == plan.iterations == 2
    assert plan.budget == trial_budget(hp.max_epochs, hp.eval_every_epochs, 64)


def test_the_loop_refuses_a_budget_of_other_data_or_a_changed_budget(tiny_bert, glue_dir):
    from transformers import AutoTokenizer

    from raytune_ft.schema import data_settings
    from raytune_ft.tasks.sequence_classification import build_bundle, load_model
    from raytune_ft.training.loop import FineTuneLoop

    bundle = build_bundle(data_settings(task="sst2", path=str(glue_dir), max_train_samples=32,
                                     max_eval_samples=16),
                          AutoTokenizer.from_pretrained(tiny_bert), max_length=32)
    hp = TrainConfig(max_epochs=1, eval_every_epochs=0.5)
    model = load_model(str(tiny_bert), bundle.label_names, seed=0)
    with pytest.raises(RaytuneFtError, match="budget is for 64 training samples"):
        FineTuneLoop(model, bundle, hp, budget=trial_budget(1, 0.5, 64),
                     task=get_task(bundle.kind))
    loop = FineTuneLoop(model, bundle, hp, budget=trial_budget(1, 0.5, 32),
                        task=get_task(bundle.kind))
    assert [loop.evaluation_point(k) for k in (1, 2)] == [16, 32]
    with pytest.raises(RaytuneFtError, match="train.max_epochs cannot change"):
        loop.apply_hyperparameters(hp.model_copy(update={"max_epochs": 2.0}))
    with pytest.raises(RaytuneFtError, match="train.eval_every_epochs cannot change"):
        loop.apply_hyperparameters(hp.model_copy(update={"eval_every_epochs": 0.25}))


def test_analysis_reads_budget_and_log_scale_from_the_record_plan(tmp_path):
    from raytune_ft.analysis._layout import read_meta

    config = experiment(train={"max_epochs": 2, "eval_every_epochs": 1.0},
                        search={"learning_rate": {"loguniform": [1e-5, 1e-3]},
                                "warmup_ratio": {"uniform": [0.0, 0.2]}})
    record = {**config.model_dump(mode="json"), "budget_samples": 512,
              "plan": config.plan(256).record()}
    (tmp_path / "raytune_ft.json").write_text(json.dumps(record))
    meta = read_meta(tmp_path, [])
    assert meta.log_scale == {"learning_rate"} and meta.iterations == 2
    # The record is read as everything else reads it: validated, so a search entry the
    # config refuses is an error naming it, not a key guessed to be linear.
    record["search"]["seed"] = {"lograndint": [1, 100]}
    (tmp_path / "raytune_ft.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="search.seed: unknown distribution"):
        read_meta(tmp_path, [])


def test_several_training_sizes_give_a_budget_each_and_one_size_records_as_before():
    """A search over the encoding (question answering's windows) can give training splits of
    several sizes: each has its budget, with the same epochs and evaluation count."""
    config = experiment(train={"max_epochs": 2, "eval_every_epochs": 0.5})
    plan = config.plan([100, 120, 100])
    assert plan.budget == trial_budget(2, 0.5, 100)
    assert plan.other_budgets == (trial_budget(2, 0.5, 120),)
    assert plan.budget_for(120).evaluation_points == (60, 120, 180, 240)
    assert plan.budget_for(100) is plan.budget
    with pytest.raises(ValueError, match=r"no budget for 99 training samples \(planned: "
                                         r"\[100, 120\]\)"):
        plan.budget_for(99)
    record = json.loads(json.dumps(plan.record()))
    assert record["other_budgets"][0]["total_samples"] == 240
    # one size: the record has no other_budgets key, so experiments recorded before it
    # existed still resume (runner._check_same_plan compares the records)
    single = config.plan(100)
    assert "other_budgets" not in single.record()
    assert single.record() == config.plan([100]).record()
