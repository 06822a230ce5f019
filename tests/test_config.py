"""The experiment schema: YAML round trips, overrides, the search-space syntax."""

import pytest
import yaml
from pydantic import ValidationError

from raytune_ft.config import (
    ExperimentConfig,
    apply_override,
    load_config,
    parse_domain,
    trial_hyperparameters,
    validate_config,
)
from raytune_ft.errors import ConfigError

EXPERIMENTS = ["sst2_quick", "sst2_pbt", "sst2_knobs", "mrpc_asha", "mrpc_pbt"]


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

    from raytune_ft.search import param_space

    config = load_config("experiments/sst2_knobs.yaml")
    space = param_space(config)
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
])
def test_settings_that_must_stay_fixed(extra, message):
    base = {"name": "x", "model": {"name": "m"}, "data": {"task": "sst2"}}
    with pytest.raises(ConfigError, match=message):
        validate_config({**base, **extra})
