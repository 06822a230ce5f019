"""search_alg: optuna, objectives and starting points: validation, seeded sampling, and warm
starts reaching the searchers (Optuna's study, hyperopt's trials) before they suggest."""

from __future__ import annotations

import math

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
    # each hyperopt trial holds its own point's reward (as a loss), not another point's
    from hyperopt import space_eval

    learned = [(space_eval(searcher._space, {k: v[0] for k, v in t["misc"]["vals"].items()}),
                t["result"]["loss"]) for t in searcher.completed]
    expected = [(p, -m["eval_accuracy"]) for p, m in zip(OBSERVED.points, OBSERVED.metrics)]
    assert sorted(learned, key=lambda pair: pair[1]) == \
        sorted(expected, key=lambda pair: pair[1])
    assert points[0] == point  # the user's starting point still comes first
    _, cold = suggestions(config, n=2)
    assert points[1] != cold[1]  # TPE's first own suggestion learned from the six


@pytest.mark.parametrize("raw, message", [
    # an objective without its mode: the full path and what is allowed (not `mode:`)
    ({"objectives": [{"metric": "eval_accuracy"}]},
     "config: objectives.0.mode: required field is missing; allowed: max, min"),
    ({"objectives": [TWO[0], {"metric": "latency_ms_b1"}]},
     "config: objectives.1.mode: required field is missing; allowed: max, min"),
    ({"objectives": [{"metric": "eval_loss", "mode": "down"}]},
     "config: objectives.0.mode: Input should be 'max' or 'min' (got 'down')"),
    # Optuna's log-scale floats take no step: the q would be dropped
    ({"search": {**SEARCH, "warmup_ratio": {"qloguniform": [0.01, 0.2, 0.01]}}},
     "config: search.warmup_ratio: qloguniform cannot be searched by Optuna (its log-scale "
     "distributions take no step q); use loguniform, or quniform"),
    # a starting point off the q grid is not a value the domain can produce
    ({"search": {**SEARCH, "warmup_ratio": {"quniform": [0.0, 0.2, 0.05]}},
      "search_alg": {"type": "tpe", "points_to_evaluate": [
          {"learning_rate": 2e-5, "batch_size": 16, "warmup_ratio": 0.07}]}},
     "search_alg.points_to_evaluate.0.warmup_ratio: 0.07 is outside search.warmup_ratio"),
])
def test_review_faults_are_one_line_errors(raw, message):
    with pytest.raises(ConfigError) as error:
        experiment(**raw)
    assert str(error.value) == message or message in str(error.value)
    assert "\n" not in str(error.value)


def test_quantized_domains_hold_their_grid_only():
    from raytune_ft.config._search import domain_contains
    from raytune_ft.config._space import parse_domain

    q = parse_domain("w", {"quniform": [0.0, 0.3, 0.1]})
    assert domain_contains(q, 0.1) and domain_contains(q, 0.30000000000000004)  # Ray's 3*0.1
    assert not domain_contains(q, 0.15) and not domain_contains(q, 0.4)
    logq = parse_domain("b", {"qloguniform": [8, 128, 8]})
    assert domain_contains(logq, 24) and not domain_contains(logq, 20)
    point = {"learning_rate": 2e-5, "batch_size": 16, "warmup_ratio": 0.15}
    on_grid = experiment({"type": "tpe", "points_to_evaluate": [point]},
                         search={**SEARCH, "warmup_ratio": {"quniform": [0.0, 0.2, 0.05]}})
    assert on_grid.search_alg.points_to_evaluate == [point]


@pytest.mark.parametrize("num_samples, population", [(6, 2), (8, 2), (20, 5), (100, 25),
                                                     (400, 50)])
def test_nsga2_population_follows_the_budget(num_samples, population):
    config = experiment({"type": "optuna", "sampler": "nsga2", "seed": 0}, objectives=TWO,
                        run={"num_samples": num_samples})
    searcher, _ = suggestions(config, n=1)
    assert searcher._sampler._population_size == population


def test_nsga2_breeds_a_second_generation_within_a_small_budget():
    # 8 trials, population 2: trials 3+ are children of the first generation, so by the
    # 8th trial the study holds trials of generations > 0 (with Optuna's 50: all of gen 0)
    config = experiment({"type": "optuna", "sampler": "nsga2", "seed": 0}, objectives=TWO,
                        run={"num_samples": 8})
    searcher = build_search_alg(config)
    searcher.set_search_properties(config.metric, config.mode, param_space(config))
    for i in range(8):
        searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"eval_accuracy": 0.5 + 0.01 * i,
                                             "latency_ms_b1": 2.0 - 0.1 * i})
    generations = {t.system_attrs.get("NSGAIISampler:generation") for t in searcher.study.trials}
    assert max(g for g in generations if g is not None) >= 2


@pytest.mark.parametrize("missing", [None, float("nan")])
def test_a_trial_without_an_objective_value_fails_in_the_study(missing):
    # a trial that diverged before its first checkpoint reports checkpoint_mb None
    goals = [TWO[0], {"metric": "checkpoint_mb", "mode": "min"}]
    searcher, _ = suggestions(experiment(objectives=goals), n=2)
    searcher.on_trial_complete("t0", {"eval_accuracy": 0.0, "checkpoint_mb": missing})
    searcher.on_trial_complete("t1", {"eval_accuracy": 0.8, "checkpoint_mb": 3.0})
    states = [t.state.name for t in searcher.study.trials]
    assert states == ["FAIL", "COMPLETE"]  # Ray's own method left t0 RUNNING
    assert searcher.study.trials[1].values == [0.8, 3.0]
    searcher.suggest("t2")  # the sampler carries on past the failed trial


# ------------------------------------------------------------------ the samplers in a run

CONTRACT_TRIALS = 4  # NSGA-II's population is then 2: the last two are children


def reports_goals(config):
    """One result; the objectives are set functions of the config."""
    from ray import tune

    tune.report({"eval_accuracy": round(1.0 - abs(math.log10(config["learning_rate"]) + 4) / 2
                                        - config["warmup_ratio"], 6),
                 "latency_ms_b1": float(config["batch_size"])})


@pytest.fixture(scope="module")
def ray_by_value(ray_local):
    import sys

    from ray import cloudpickle

    # `reports_goals` lives in this test module, which Ray's workers cannot import
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2", "random", "qmc", "cmaes"])
def test_every_sampler_runs_a_search_and_learns_every_trial(sampler, tmp_path, ray_by_value):
    # Through the real Tuner, which pickles the searcher (tuner.pkl, its saved state): NSGA-II
    # ended every run there (its sampler held a threading.Lock). cmaes takes one objective.
    from ray import tune

    from raytune_ft.tuning.runner import tune_settings

    goals = {} if sampler == "cmaes" else {"objectives": TWO}
    config = experiment({"type": "optuna", "sampler": sampler, "seed": 0,
                         "n_initial_points": 2}, resources={"cpus_per_trial": 0.5},
                        run={"num_samples": CONTRACT_TRIALS, "verbose": 0}, **goals)
    tune_config, run_config = tune_settings(config, str(tmp_path / sampler))
    results = tune.Tuner(tune.with_resources(reports_goals, {"cpu": 0.5}),
                         param_space=param_space(config), tune_config=tune_config,
                         run_config=run_config).fit()
    assert len(results) == CONTRACT_TRIALS and not results.errors
    saved = build_search_alg(config)  # the searcher as the experiment saved it
    saved.restore_from_dir(str(tmp_path / sampler))
    done = {t.number: t for t in saved.study.trials if t.state.name == "COMPLETE"}
    assert len(done) == CONTRACT_TRIALS
    for result in results:
        learned = done[saved._ot_trials[result.metrics["trial_id"]].number]
        assert learned.params == {k: result.config[k] for k in SEARCH}
        assert learned.values == [result.metrics[m] for m, _ in config.objective_list()]


@pytest.mark.slow  # ~35 s here; the contract above runs NSGA-II through the Tuner by default
def test_nsga2_through_the_cli(tmp_path, tiny_bert, glue_dir, ray_by_value):
    import contextlib
    import io

    from support import experiment_yaml

    from raytune_ft import cli

    path = experiment_yaml(
        tmp_path / "nsga2.yaml", tiny_bert, glue_dir, tmp_path / "results", name="nsga2",
        data={"max_train_samples": 64, "max_eval_samples": 32},
        train={"max_epochs": 1, "eval_every_epochs": 1.0, "max_micro_batch": 16},
        objectives=[{"metric": "eval_loss", "mode": "min"},
                    {"metric": "model_mb", "mode": "min"}],
        scheduler={"type": "fifo"}, search_alg={"type": "optuna", "sampler": "nsga2", "seed": 0},
        run={"num_samples": 3, "storage_path": str(tmp_path / "results"), "verbose": 0})
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(["tune", str(path)])
    assert code == cli.EXIT_OK, out.getvalue()[-3000:]
    assert "search optuna nsga2 (seed 0)" in out.getvalue()
    assert "trials       3 run, 0 failed, 0 diverged" in out.getvalue()
