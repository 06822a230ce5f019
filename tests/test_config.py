"""The experiment schema: YAML round trips, overrides, the search-space syntax."""

import re

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from raytune_ft.config import INTEGER_FIELDS, TrainConfig, apply_override, parse_domain
from raytune_ft.errors import ConfigError
from raytune_ft.schema import ExperimentConfig, load_config, trial_hyperparameters, validate_config

EXPERIMENTS = ["sst2_quick", "sst2_pbt", "sst2_knobs", "mrpc_asha", "mrpc_pbt", "mrpc_ddp",
               "sst2_lora"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_shipped_experiments_round_trip(name, tmp_path):
    config = load_config(f"experiments/{name}.yaml")
    dumped = tmp_path / "again.yaml"
    dumped.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert load_config(dumped) == config


def test_overrides_parse_values_as_yaml_without_eval(tmp_path):
    config = load_config("experiments/sst2_quick.yaml", [
        "train.max_epochs=1", "run.num_samples=3", "search.batch_size={choice: [8, 16]}",
        "name=other", "train.lr_scaling=sqrt"])
    assert config.train.max_epochs == 1.0 and config.run.num_samples == 3
    assert config.search["batch_size"] == {"choice": [8, 16]} and config.name == "other"
    raw = {}
    apply_override(raw, "a.b.c=__import__('os')")
    assert raw == {"a": {"b": {"c": "__import__('os')"}}}  # a string, never evaluated
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        apply_override(raw, "no-equals-sign")


def test_config_is_immutable():
    config = load_config("experiments/sst2_quick.yaml")
    with pytest.raises(ValidationError, match="frozen"):
        config.train.learning_rate = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("spec,kind,args", [
    ({"loguniform": [1e-5, 1e-4]}, "loguniform", (1e-5, 1e-4)),
    ({"uniform": [0, 0.2]}, "uniform", (0, 0.2)),
    ({"choice": [16, 32]}, "choice", (16, 32)),
    ({"randint": [0, 9]}, "randint", (0, 9)),
    ({"grid": ["a", "b"]}, "grid", ("a", "b")),
    (0.1, "constant", (0.1,)),
    ({"lr": 1, "b": 2}, "constant", ({"lr": 1, "b": 2},)),
])
def test_search_space_syntax(spec, kind, args):
    domain = parse_domain("search.x", spec)
    assert (domain.kind, domain.args) == (kind, args)


def test_search_domains_become_tune_domains():
    from ray import tune

    from raytune_ft.tuning.search import param_space

    config = load_config("experiments/sst2_knobs.yaml")
    space = param_space(config.plan())
    assert isinstance(space["learning_rate"], tune.search.sample.Float)
    assert space["schedule"].categories == ["linear", "cosine", "step", "exponential",
                                            "constant"]


def test_trial_hyperparameters_resolve_named_batch_schedules_and_round_pb2_floats():
    config = load_config("experiments/sst2_knobs.yaml")
    hp = trial_hyperparameters(config, {"batch_schedule": "grow", "learning_rate": 1e-4})
    assert hp.batch_schedule == [(0.0, 16), (0.5, 32)] and hp.learning_rate == 1e-4
    assert trial_hyperparameters(config, {"batch_schedule": "none"}).batch_schedule is None
    assert trial_hyperparameters(config, {"batch_size": 23.6}).batch_size == 24


def test_budget_in_iterations():
    base = {"name": "x", "model": {"name": "m"}, "data": {"task": "sst2"}}
    assert validate_config({**base, "train": {"max_epochs": 2, "eval_every_epochs": 0.3}}
                           ).iterations == 7
    assert ExperimentConfig.model_validate(
        {**base, "train": {"max_epochs": 3, "eval_every_epochs": 1}}).iterations == 3


@pytest.mark.parametrize("extra,message", [
    ({"search": {"max_epochs": {"choice": [1, 2]}}}, "search.max_epochs: cannot be searched"),
    ({"search": {"eval_every_epochs": {"grid": [0.5, 1]}}},
     "search.eval_every_epochs: cannot be searched"),
    ({"train": {"batch_schedule": "nope"}}, "train.batch_schedule: 'nope' is not in"),
    ({"search": {"freeze_layers": {"choice": [0, 1]}},
      "scheduler": {"type": "pbt", "mutations": ["freeze_layers"]}},
     "scheduler.mutations: 'freeze_layers' cannot change inside a running trial"),
    ({"search": {"length_group_window": {"choice": [512, 2048]}},
      "scheduler": {"type": "pbt", "mutations": ["length_group_window"]}},
     "scheduler.mutations: 'length_group_window' cannot change inside a running trial "
     r"\(it orders the samples of the current epoch\)"),
])
def test_settings_that_must_stay_fixed(extra, message):
    base = {"name": "x", "model": {"name": "m"}, "data": {"task": "sst2"}}
    with pytest.raises(ConfigError, match=message):
        validate_config({**base, **extra})


BASE = {"name": "x", "model": {"name": "m"}, "data": {"task": "sst2"}}


def test_integer_settings_are_the_int_annotated_ones():
    assert INTEGER_FIELDS == ("batch_size", "plateau_patience", "freeze_layers",
                              "max_micro_batch", "reference_batch_size", "seed",
                              "eval_batch_size", "length_group_window", "lora_r")


@pytest.mark.parametrize("key,spec,message", [
    ("batch_size", {"uniform": [8, 32]}, "search.batch_size: uniform [8, 32] draws fractional "
     "values, but batch_size is an integer; allowed: randint, choice or grid of integers"),
    ("batch_size", {"quniform": [8, 32, 8]}, "search.batch_size: quniform [8, 32, 8] draws"),
    ("max_micro_batch", {"loguniform": [4, 64]}, "search.max_micro_batch: loguniform"),
    ("reference_batch_size", {"uniform": [16, 64]}, "search.reference_batch_size: uniform"),
    ("seed", {"qloguniform": [1, 100, 1]}, "search.seed: qloguniform"),
    ("batch_size", {"choice": [16, 24.5]}, "search.batch_size: value 24.5 is not an integer"),
    ("batch_size", {"grid": [16.0, 32]}, "search.batch_size: value 16.0 is not an integer"),
    ("plateau_patience", 2.0, "search.plateau_patience: value 2.0 is not an integer"),
    ("freeze_layers", {"choice": [True, 2]}, "search.freeze_layers: value True is not an"),
])
def test_integer_settings_refuse_fractional_domains(key, spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config({**BASE, "search": {key: spec}, "search_alg": {"type": "random"}})


def test_integer_settings_accept_integer_domains():
    search = {"batch_size": {"randint": [8, 32]}, "seed": {"choice": [0, 1]},
              "reference_batch_size": {"choice": [None, 32]}, "eval_batch_size": 64,
              "plateau_patience": {"grid": [1, 2]}}
    config = validate_config({**BASE, "search": search, "search_alg": {"type": "random"}})
    hp = trial_hyperparameters(config, {"batch_size": 12, "reference_batch_size": 31.6})
    assert (hp.batch_size, hp.reference_batch_size) == (12, 32)  # int | None rounds too


@pytest.mark.parametrize("section,value,message", [
    ("train", {"seed": -1}, "train.seed: Input should be greater than or equal to 0 (got -1)"),
    ("train", {"seed": 2**32}, "train.seed: Input should be less than 4294967296"),
    ("search", {"seed": {"choice": [0, -3]}}, "search.seed: value -3 is invalid"),
    ("search", {"seed": {"randint": [-5, 5]}}, "search.seed: value -5 is invalid"),
    ("search_alg", {"seed": -1}, "search_alg.seed: Input should be greater than or equal to 0"),
    ("data", {"task": "sst2", "subset_seed": -2}, "data.subset_seed: Input should be greater"),
])
def test_negative_seeds_are_config_errors(section, value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config({**BASE, section: value})


def test_the_seeds_validation_allows_work_where_they_are_used():
    from ray.tune.search import BasicVariantGenerator

    from raytune_ft.training.batching import epoch_order

    lengths = np.array([5, 3, 9, 1])
    with pytest.raises(ValueError):  # what a negative seed did inside the trial
        epoch_order(lengths, 0, -1, 2)
    with pytest.raises(ValueError):
        BasicVariantGenerator(random_state=-1)
    top = 2**32 - 1
    validate_config({**BASE, "train": {"seed": top}, "search_alg": {"seed": top}})
    assert sorted(epoch_order(lengths, 0, top, 2)) == [0, 1, 2, 3]
    BasicVariantGenerator(random_state=top)


def test_grid_search_refuses_choice_and_says_to_write_grid():
    search = {"learning_rate": {"grid": [1e-4, 3e-4]}, "batch_size": {"choice": [16, 32]}}
    with pytest.raises(ConfigError, match=re.escape(
            "search.batch_size: choice [16, 32] draws one value per trial, not a grid axis, "
            "under search_alg.type: grid; write {grid: [16, 32]} to try every value")):
        validate_config({**BASE, "search": search, "search_alg": {"type": "grid"}})
    for alg in ("random", "tpe"):  # choice is a sampled dimension there, as meant
        validate_config({**BASE, "search": {"batch_size": {"choice": [16, 32]}},
                         "search_alg": {"type": alg}})


@pytest.mark.parametrize("spec,message", [
    ({"quniform": [0.01, 0.1, 0.02]}, "search.weight_decay: quniform low 0.01 is not a "
     "multiple of q 0.02"),
    ({"quniform": [0.0, 0.15, 0.1]}, "quniform high 0.15 is not a multiple of q 0.1"),
    ({"qloguniform": [1e-4, 1e-2, 0]}, "qloguniform q 0 must be > 0"),
])
def test_quantized_ranges_end_on_multiples_of_q(spec, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config({**BASE, "search": {"weight_decay": spec}})


@pytest.mark.parametrize("data,message", [
    ({"kind": "token_tagging", "train_file": "a.csv", "eval_file": "b.csv"},
     "data.kind: 'token_tagging' is not a task"),
    ({"kind": "sequence_classification", "train_file": "a.csv", "eval_file": "b.csv"},
     "data.text_columns and data.label_column are required with data.train_file"),
    ({"train_file": "a.csv"}, "data.eval_file is required with data.train_file"),
])
def test_data_kind_chooses_the_task_and_the_task_checks_its_fields(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config({**BASE, "data": data})


def test_data_kind_picks_the_task_that_reads_the_files():
    from raytune_ft.tasks import task_for

    files = {"train_file": "a.csv", "eval_file": "b.csv", "text_columns": ["t"],
             "label_column": "l"}
    for data in (files, {**files, "kind": "sequence_classification"}, {"task": "sst2"}):
        assert task_for(validate_config({**BASE, "data": data}).data).name == \
            "sequence_classification"


@pytest.mark.parametrize("key", ["lora_r", "lora_alpha", "lora_targets"])
def test_pbt_keeps_the_adapter_shape_and_scale_fixed(key):
    values = {"lora_r": [4, 8], "lora_alpha": [8.0, 16.0], "lora_targets": ["query", "value"]}
    config = {**BASE, "train": {"lora_r": 4}, "search": {key: {"choice": values[key]}},
              "scheduler": {"type": "pbt", "mutations": [key]}}
    with pytest.raises(ConfigError, match=f"scheduler.mutations: '{key}' cannot change inside "
                       "a running trial"):
        validate_config(config)
    config["scheduler"]["mutations"] = ["lora_dropout"]
    config["search"]["lora_dropout"] = {"uniform": [0.0, 0.2]}
    assert validate_config(config).scheduler.mutations == ["lora_dropout"]


def test_lora_without_peft_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "peft" else real(name, *a))
    assert validate_config({**BASE, "train": {"lora_r": 0}}).train.lora_r == 0
    with pytest.raises(ConfigError, match=r"train.lora_r: LoRA needs peft, which is not "
                       r"installed: pip install 'raytune-ft\[lora\]'"):
        validate_config({**BASE, "search": {"lora_r": {"choice": [0, 8]}}})


def test_lora_targets_are_normalised_and_checked():
    assert TrainConfig(lora_targets="query, value").lora_targets == "query,value"
    with pytest.raises(ValidationError, match="comma-separated module names"):
        TrainConfig(lora_targets="query,")


def test_a_kind_of_task_without_metric_tunes_its_primary_metric():
    files = {"train_file": "a.conllu", "eval_file": "b.conllu"}
    config = validate_config({**BASE, "data": {**files, "kind": "token_classification"}})
    assert config.metric == "eval_token_accuracy"
    text = {"train_file": "a.csv", "eval_file": "b.csv", "text_columns": ["t"],
            "label_column": "l"}
    assert validate_config({**BASE, "data": text}).metric == "eval_accuracy"


@pytest.mark.parametrize("data,message", [
    ({"kind": "image_classification", "train_file": "t", "eval_file": "v",
      "label_names": ["a", "b"]}, "data.label_names: unknown key for data.kind "
     "image_classification (read by data.kind token_classification); allowed: kind, "
     "train_file, eval_file, max_train_samples, max_eval_samples, subset_seed, image_column, "
     "label_column, random_crop_scale, horizontal_flip, max_object_store_mb"),
    ({"kind": "token_classification", "train_file": "t.conllu", "eval_file": "v.conllu",
      "horizontal_flip": True}, "data.horizontal_flip: unknown key for data.kind "
     "token_classification (read by data.kind image_classification)"),
    ({"task": "sst2", "tag_column": "upos"}, "data.tag_column: unknown key for data.kind "
     "sequence_classification (read by data.kind token_classification)"),
])
def test_a_field_another_kind_of_task_reads_is_refused_not_ignored(data, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config({**BASE, "data": data})
