"""search_alg: optuna, objectives and starting points: validation, seeded sampling, and warm
starts reaching the searchers (Optuna's study, hyperopt's trials) before they suggest."""

from __future__ import annotations

import pytest

from raytune_ft.config import validate_config
from raytune_ft.errors import ConfigError
from raytune_ft.tuning.search import build_search_alg, param_space
from raytune_ft.tuning.warm_start import Observations

SEARCH = {"learning_rate": {"loguniform": [1e-5, 1e-3]}, "batch_size": {"choice": [16, 32]},
          "warmup_ratio": {"uniform": [0.0, 0.2]}}
TWO = [{"metric": "eval_accuracy", "mode": "max"}, {"metric": "latency_ms_b1", "mode": "min"}]


def experiment(search_alg=None, **extra):
    return validate_config({
        "name": "x", "model": {"name": "m"}, "data": {"task": "sst2"},
        "train": {"max_epochs": 2}, "search": extra.pop("search", SEARCH),
        "search_alg": search_alg or {"type": "optuna", "sampler": "tpe", "seed": 3}, **extra})


def suggestions(config, n=6, observations=None):
    searcher = build_search_alg(config, observations)
    searcher.set_search_properties(config.metric, config.mode, param_space(config))
    return searcher, [searcher.suggest(f"t{i}") for i in range(n)]


@pytest.mark.parametrize("raw, message", [
    ({"search_alg": {"type": "tpe"}, "objectives": TWO},
     "objectives: 2 objectives, but search_alg.type 'tpe' (hyperopt) optimises one metric"),
    ({"search_alg": {"type": "optuna", "sampler": "cmaes"}, "objectives": TWO},
     "search_alg.sampler: cmaes"),
    ({"search_alg": {"type": "random", "sampler": "gp"}},
     "search_alg.sampler: only with search_alg.type: optuna"),
    ({"search_alg": {"type": "optuna", "sampler": "gp", "multivariate": True}},
     "search_alg.multivariate: only with sampler tpe"),
    ({"search": {"batch_size": {"grid": [16, 32]}}},
     "search.batch_size: grid cannot be searched by Optuna"),
    ({"objectives": [{"metric": "latency_ms", "mode": "min"}]},
     "objectives.0.metric: 'latency_ms' is never reported"),
    ({"objectives": TWO + [TWO[0]]}, "objectives.2.metric: 'eval_accuracy' is listed twice"),
    ({"metric": "eval_loss", "mode": "min", "objectives": TWO},
     "metric: 'eval_loss' (min) must be the first objective"),
    ({"search_alg": {"type": "optuna", "points_to_evaluate": [
        {"learning_rate": 2e-5, "batch_size": 24, "warmup_ratio": 0.1}]}},
     "search_alg.points_to_evaluate.0.batch_size: 24 is outside search.batch_size"),
    ({"search_alg": {"type": "tpe", "points_to_evaluate": [{"learning_rate": 2e-5}]}},
     "search_alg.points_to_evaluate.0: batch_size is missing"),
    ({"search_alg": {"type": "optuna", "points_to_evaluate": [
        {"learning_rate": 2e-5, "batch_size": 16, "warmup_ratio": 0.1, "seed": 1}]}},
     "search_alg.points_to_evaluate.0.seed: not searched"),
])
def test_impossible_combinations_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError) as error:
        experiment(**raw)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_objectives_give_metric_and_mode():
    config = experiment(objectives=TWO)
    assert (config.metric, config.mode) == ("eval_accuracy", "max")
    assert config.objective_list() == [("eval_accuracy", "max"), ("latency_ms_b1", "min")]


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2", "random", "qmc"])
def test_a_seed_repeats_the_samples_and_another_seed_does_not(sampler):
    config = experiment({"type": "optuna", "sampler": sampler, "seed": 3}, objectives=TWO)
    _, first = suggestions(config)
    _, again = suggestions(config)
    _, other = suggestions(experiment({"type": "optuna", "sampler": sampler, "seed": 4},
                                      objectives=TWO))
    assert first == again and first != other
    for point in first:
        assert 1e-5 <= point["learning_rate"] <= 1e-3 and point["batch_size"] in (16, 32)


def test_optuna_optimises_every_objective():
    searcher, _ = suggestions(experiment(objectives=TWO), n=1)
    study = searcher.study
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    searcher.on_trial_complete("t0", {"eval_accuracy": 0.8, "latency_ms_b1": 3.0})
    assert study.trials[0].values == [0.8, 3.0]


def test_points_to_evaluate_come_first():
    point = {"learning_rate": 2e-5, "batch_size": 32, "warmup_ratio": 0.1}
    for alg in ({"type": "optuna"}, {"type": "tpe"}, {"type": "random"}):
        config = experiment({**alg, "points_to_evaluate": [point]})
        searcher = build_search_alg(config)
        if alg["type"] == "random":
            assert searcher._points_to_evaluate == [point]
            continue
        searcher.set_search_properties(config.metric, config.mode, param_space(config))
        assert searcher.suggest("t0") == point, alg


OBSERVED = Observations(
    points=[{"learning_rate": 1e-5 * 2 ** i, "batch_size": [16, 32][i % 2],
             "warmup_ratio": 0.02 * i} for i in range(6)],
    metrics=[{"eval_accuracy": 0.5 + 0.05 * i, "latency_ms_b1": 1.0 + i} for i in range(6)])


def test_warm_optuna_study_holds_the_observations_before_its_first_suggestion():
    config = experiment({"type": "optuna", "sampler": "tpe", "seed": 0,
                         "n_initial_points": 4}, objectives=TWO)
    searcher, points = suggestions(config, n=1, observations=OBSERVED)
    done = [t for t in searcher.study.trials if t.state.name == "COMPLETE"]
    assert [t.params for t in done] == OBSERVED.points
    assert [t.values for t in done] == OBSERVED.values(config.objective_list())
    # 6 observations > 4 startup trials: the first suggestion comes from the model, and
    # differs from what the same seed samples cold
    _, cold = suggestions(config, n=1)
    assert points != cold


def test_warm_hyperopt_trials_hold_the_rewards_as_losses():
    config = experiment({"type": "tpe", "seed": 0, "n_initial_points": 4})
    point = {"learning_rate": 3e-5, "batch_size": 16, "warmup_ratio": 0.1}
    config = experiment({"type": "tpe", "seed": 0, "n_initial_points": 4,
                         "points_to_evaluate": [point]})
    searcher, points = suggestions(config, n=2, observations=OBSERVED)
    losses = sorted(t["result"]["loss"] for t in searcher.completed)
    assert losses == pytest.approx(sorted(-m["eval_accuracy"] for m in OBSERVED.metrics))
    assert points[0] == point  # the user's starting point still comes first
    _, cold = suggestions(config, n=2)
    assert points[1] != cold[1]  # TPE's first own suggestion learned from the six
