"""PBT and PB2 explore inside the searched domains; PB2 models log-scaled keys in log10.

The explore steps run through the schedulers' own `_get_new_config`, without Ray running,
hundreds of times from the edges of each domain: every result must be a valid trial.
"""

from __future__ import annotations

import math
import pickle
import random
from types import SimpleNamespace

import numpy as np
import pytest

from raytune_ft.config import parse_domain
from raytune_ft.schedulers import Range, StayInDomain, build_scheduler, mutation_ranges, to_tune
from raytune_ft.schedulers._log_pb2 import LogScalePB2, log_bounds
from raytune_ft.schema import trial_hyperparameters, validate_config


def built(config):
    """The experiment's Ray scheduler, built from its settings and plan."""
    return build_scheduler(config.scheduler, config.plan())


# Domains whose edges a 1.2 / 0.8 step leaves: layer_decay <= 1, warmup_ratio < 1, integers.
SEARCH = {
    "layer_decay": {"uniform": [0.75, 1.0]},
    "warmup_ratio": {"uniform": [0.0, 0.9]},
    "batch_size": {"randint": [1, 4]},
    "plateau_patience": {"randint": [1, 3]},
    "learning_rate": {"loguniform": [1e-5, 1e-3]},
    "weight_decay": {"quniform": [0.02, 0.1, 0.02]},
    "max_micro_batch": {"choice": [8, 16, 32]},
    "schedule": {"choice": ["linear", "cosine", "plateau"]},
}
RANGES = {"layer_decay": (0.75, 1.0), "warmup_ratio": (0.0, 0.9), "batch_size": (1, 4),
          "plateau_patience": (1, 3), "learning_rate": (1e-5, 1e-3),
          "weight_decay": (0.02, 0.1), "max_micro_batch": (8, 32)}
INTEGERS = ("batch_size", "plateau_patience", "max_micro_batch")


def experiment(kind: str = "pbt", search: dict = SEARCH, **scheduler):
    return validate_config({
        "name": "x", "model": {"name": "m"}, "data": {"task": "sst2"},
        "train": {"max_epochs": 4, "eval_every_epochs": 1}, "search": search,
        "scheduler": {"type": kind, "perturbation_interval": 1, "mutations": list(search),
                      **scheduler},
        "search_alg": {"type": "random"}})


def edges(side: int) -> dict:
    """A config at the low (0) or high (1) end of every domain."""
    config = {key: value[side] for key, value in RANGES.items()}
    return {**config, "schedule": ["linear", "plateau"][side]}


def check_in_domain(config, new: dict) -> None:
    trial_hyperparameters(config, new)  # raises ConfigError outside a field's limits
    for key, (low, high) in RANGES.items():
        assert low <= new[key] <= high, (key, new[key])
    for key in INTEGERS:
        assert type(new[key]) is int, (key, new[key])
    step = new["weight_decay"] / 0.02
    assert step == pytest.approx(round(step)), new["weight_decay"]  # on the q grid


@pytest.mark.parametrize("resample", [0.0, 0.25])
def test_pbt_explore_never_leaves_the_searched_domain(resample):
    config = experiment(resample_probability=resample)
    scheduler = built(config)
    random.seed(0)
    np.random.seed(0)
    for side in (1, 0):
        for _ in range(300):  # one explore step from the edge
            new, _ = scheduler._get_new_config(None, SimpleNamespace(config=edges(side)))
            check_in_domain(config, new)
    walk = edges(1)
    for _ in range(500):  # repeated exploits: each clone explores its donor's config
        walk, _ = scheduler._get_new_config(None, SimpleNamespace(config=walk))
        check_in_domain(config, walk)


def test_pbt_explore_at_the_top_clips_and_keeps_values_inside():
    scheduler = built(experiment(resample_probability=0.0,
                                           perturbation_factors=[1.2, 0.8]))
    random.seed(1)
    seen = {"layer_decay": set(), "batch_size": set()}
    for _ in range(50):
        top = {**edges(1), "layer_decay": 0.95, "batch_size": 4}
        new, ops = scheduler._get_new_config(None, SimpleNamespace(config=top))
        seen["layer_decay"].add(new["layer_decay"])
        seen["batch_size"].add(new["batch_size"])
        assert new["layer_decay"] == (1.0 if ops["layer_decay"] == "* 1.2" else 0.95 * 0.8)
    # 0.95 x 1.2 = 1.14 is clipped to 1.0; 4 x 1.2 = 4.8 -> 5 -> 4; 4 x 0.8 = 3.2 -> 3
    assert seen == {"layer_decay": {1.0, 0.95 * 0.8}, "batch_size": {3, 4}}


def test_range_clip_exact_numbers():
    assert Range(0.75, 1.0).clip(1.08) == 1.0
    assert Range(0.75, 1.0).clip(0.6) == 0.75
    assert Range(0.75, 1.0).clip(0.85) == 0.85  # in range: unchanged
    batch = Range(1, 4, integer=True)
    assert [batch.clip(v) for v in (0.8, 0.4, 2.6, 4.8, 3)] == [1, 1, 3, 4, 3]
    assert all(type(batch.clip(v)) is int for v in (0.8, 23.0, 2))
    grid = Range(0.02, 0.1, q=0.02)
    assert [grid.clip(v) for v in (0.0, 0.066, 0.12)] == pytest.approx([0.02, 0.06, 0.1])
    listed = Range(8, 32, integer=True, values=(8, 16, 32))  # PB2 proposes in [8, 32]
    assert [listed.clip(v) for v in (9.7, 23.0, 24, 31.2, 40)] == [8, 16, 16, 32, 32]


def test_mutation_ranges_cover_numeric_domains_only():
    ranges = mutation_ranges(experiment().space(), list(SEARCH))
    assert ranges["batch_size"] == Range(1, 4, integer=True)
    assert ranges["max_micro_batch"] == Range(8, 32, integer=True, values=(8, 16, 32))
    assert ranges["weight_decay"] == Range(0.02, 0.1, q=0.02)
    assert ranges["learning_rate"] == Range(1e-5, 1e-3)
    assert "schedule" not in ranges  # names: PBT only ever picks from the list
    explore = StayInDomain(ranges)
    assert explore({"schedule": "cosine", "batch_size": 7.6, "seed": 3}) == {
        "schedule": "cosine", "batch_size": 4, "seed": 3}


def test_quniform_draws_floats_so_integer_settings_refuse_it():
    domain = to_tune(parse_domain("search.batch_size", {"quniform": [8, 32, 8]}))
    assert isinstance(domain.sample(), float)  # Ray keeps quniform values floats


def test_schedulers_pickle_with_their_explore_step():
    for kind in ("pbt", "pb2"):
        search = {k: v for k, v in SEARCH.items() if k != "schedule"}
        scheduler = pickle.loads(pickle.dumps(built(experiment(kind, search))))
        explore = scheduler._after_explore if kind == "pb2" else scheduler._custom_explore_fn
        assert explore({"layer_decay": 1.08, "batch_size": 0})["layer_decay"] == 1.0
        assert explore({"layer_decay": 1.08, "batch_size": 0})["batch_size"] == 1


def test_log_bounds_round_trip():
    bounds = {"learning_rate": [1e-5, 1e-2], "batch_size": [8, 64]}
    logged = log_bounds(bounds, ("learning_rate",))
    assert logged == {"learning_rate": [-5.0, -2.0], "batch_size": [8, 64]}
    assert [10.0 ** v for v in logged["learning_rate"]] == pytest.approx([1e-5, 1e-2])


class FakeTrial:
    """What PB2 reads of a trial: its config, and its name as the data key."""

    def __init__(self, name: str, config: dict) -> None:
        self.name, self.config = name, config

    def __str__(self) -> str:
        return self.name


def test_pb2_models_log_keys_in_log10_and_proposes_valid_trials():
    search = {"learning_rate": {"loguniform": [1e-5, 1e-2]}, "batch_size": {"randint": [8, 64]}}
    config = experiment("pb2", search)
    scheduler = built(config)
    assert isinstance(scheduler, LogScalePB2)
    assert scheduler._hyperparam_bounds == {"learning_rate": [-5.0, -2.0],
                                            "batch_size": [8, 64]}
    scheduler.set_search_properties("eval_accuracy", "max")
    np.random.seed(0)
    random.seed(0)
    trials = [FakeTrial(f"t{i}", {"learning_rate": float(10 ** np.random.uniform(-5, -2)),
                                  "batch_size": int(np.random.randint(8, 65))})
              for i in range(8)]
    for time in range(1, 5):  # the reward peaks at learning_rate 1e-4, in log space
        for trial in trials:
            reward = time * (1 - (math.log10(trial.config["learning_rate"]) + 4) ** 2 / 4)
            scheduler._save_trial_state(SimpleNamespace(), time,
                                        {"training_iteration": time, "eval_accuracy": reward},
                                        trial)
    logged = scheduler.data["learning_rate"].to_numpy()
    linear = [t.config["learning_rate"] for t in trials] * 4
    assert logged == pytest.approx(np.log10(linear))  # the model fits log10 values
    for donor in trials[:2]:
        new, _ = scheduler._get_new_config(trials[-1], donor)
        trial_hyperparameters(config, new)
        assert 1e-5 <= new["learning_rate"] <= 1e-2
        # Linear bounds put these proposals on the edges (1e-5 or 1e-2); log10 finds the peak.
        assert abs(math.log10(new["learning_rate"]) + 4) < 0.5, new["learning_rate"]
        assert type(new["batch_size"]) is int and 8 <= new["batch_size"] <= 64


def test_pb2_without_data_for_the_donor_keeps_its_linear_values():
    search = {"learning_rate": {"loguniform": [1e-5, 1e-2]}, "batch_size": {"choice": [8, 32]}}
    scheduler = built(experiment("pb2", search))
    scheduler.set_search_properties("eval_accuracy", "max")
    donor = FakeTrial("donor", {"learning_rate": 3e-4, "batch_size": 8})
    scheduler._save_trial_state(SimpleNamespace(), 1,
                                {"training_iteration": 1, "eval_accuracy": 0.5}, donor)
    new, _ = scheduler._get_new_config(FakeTrial("other", {}), donor)  # one row: no proposal
    assert new == {"learning_rate": 3e-4, "batch_size": 8}


def test_pb2_learns_from_the_values_a_trial_runs_not_its_raw_proposal():
    # PB2 proposes in [8, 32] for batch sizes [8, 16, 32]; the trial runs the nearest listed
    # size, and PB2's data row and pending point must say so (else the GP learns a reward
    # change for a batch size nobody trained with).
    search = {"learning_rate": {"loguniform": [1e-5, 1e-2]},
              "batch_size": {"choice": [8, 16, 32]}}
    config = experiment("pb2", search)
    scheduler = built(config)
    scheduler.set_search_properties("eval_accuracy", "max")
    np.random.seed(1)
    random.seed(1)
    trials = [FakeTrial(f"t{i}", {"learning_rate": float(10 ** np.random.uniform(-5, -2)),
                                  "batch_size": int(np.random.choice([8, 16, 32]))})
              for i in range(8)]
    for time in range(1, 4):
        for trial in trials:
            reward = time * (1 - (math.log10(trial.config["learning_rate"]) + 4) ** 2 / 4)
            scheduler._save_trial_state(SimpleNamespace(), time,
                                        {"training_iteration": time, "eval_accuracy": reward},
                                        trial)
    for donor in trials[:3]:
        new, _ = scheduler._get_new_config(trials[-1], donor)
        assert new["batch_size"] in (8, 16, 32)
        row = scheduler.data.iloc[-1]
        assert row["batch_size"] == new["batch_size"]
        assert row["learning_rate"] == pytest.approx(math.log10(new["learning_rate"]))
        assert list(scheduler.current[-1]) == pytest.approx(
            [math.log10(new["learning_rate"]), new["batch_size"]])
