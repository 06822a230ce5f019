"""Warm starts: PBT/PB2 refused on either side, and where the prior came from kept in the
experiment record and shown in the report (no Ray, no training: records written here)."""

from __future__ import annotations

import json

import pytest

from raytune_ft.analysis._report import _warm_start_note
from raytune_ft.errors import ConfigError
from raytune_ft.experiment import CONFIG_FILE, read_record, write_record
from raytune_ft.schema import validate_config
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
                        sources=["/r/first", "/r/second"], imported=[2, 1],
                        skipped=[{"ran train.freeze_layers != 0": 1}, {}])
    write_record(str(tmp_path), experiment(), {"warm_start": seen.record()})
    _, record = read_record(str(tmp_path))  # the key is derived, not a config error
    assert record["warm_start"] == [
        {"experiment": "/r/first", "trials": 2, "skipped": 1,
         "why": {"ran train.freeze_layers != 0": 1}},
        {"experiment": "/r/second", "trials": 1, "skipped": 0, "why": {}}]
    assert seen.skip_text() == "1 ran train.freeze_layers != 0" and seen.skip_text(1) == ""
    note = _warm_start_note(tmp_path)
    assert "Warm start: the searcher began with 3 earlier trials from /r/first (2 trials, " \
           "1 skipped: ran train.freeze_layers != 0 (1)); /r/second (1 trials)." in note
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / CONFIG_FILE).write_text(json.dumps(experiment().model_dump(mode="json")))
    assert _warm_start_note(plain) == ""


# ------------------------------------------------------------------- fixed settings compared
# An earlier experiment as Ray leaves it (params.json, result.json per trial), written here:
# the comparison reads only the record and the analysis tables.

def earlier_run(folder, config, params: list[dict], derived=None, reported=None):
    """`config`'s record and one finished trial per entry of `params` (its searched values),
    each reporting eval_accuracy 0.6 + 0.1 i (and `reported[i]`) at the end of its budget."""
    write_record(str(folder), config, {"model_path": "/models/m", **(derived or {})})
    for i, values in enumerate(params):
        trial = folder / f"train_abcde_{i:05d}_{i}_x"
        trial.mkdir()
        (trial / "params.json").write_text(json.dumps(values))
        line = {"training_iteration": 1, "trial_id": f"abcde_{i:05d}", "done": True,
                "eval_accuracy": 0.6 + 0.1 * i, "eval_loss": 0.5, "epoch": 3.0,
                "samples_seen": 100, "diverged": False, **(reported or {}).get(i, {})}
        (trial / "result.json").write_text(json.dumps(line) + "\n")
    return str(folder)


def refusal(target, folder) -> str:
    with pytest.raises(ConfigError) as error:
        load_observations(target, [folder])
    assert "\n" not in str(error.value)
    return str(error.value)


TPE = {"type": "tpe"}
LRS = [{"learning_rate": 1e-4}, {"learning_rate": 2e-4}]


def test_same_fixed_settings_import_every_trial(tmp_path):
    folder = earlier_run(tmp_path, experiment(), LRS)
    seen = load_observations(experiment(search_alg=TPE), [folder])
    assert seen.points == LRS
    assert seen.metrics == [{"eval_accuracy": pytest.approx(0.6)},
                            {"eval_accuracy": pytest.approx(0.7)}]
    # where and how it ran, how it was searched and tracked change no trial's result
    other = experiment(search_alg=TPE, run={"num_samples": 3, "storage_path": "/elsewhere"},
                       resources={"cpus_per_trial": 2}, scheduler={"type": "asha"},
                       name="y")
    assert load_observations(other, [folder]).imported == [2]


@pytest.mark.parametrize("change, message", [
    ({"model": {"name": "other"}}, "model.name differs: 'other' now, 'm' there"),
    ({"model": {"name": "m", "max_length": 64}}, "model.max_length differs: 64 now, 128 there"),
    ({"train": {"max_epochs": 2}}, "train.max_epochs differs: 2.0 now, 3.0 there"),
    ({"train": {"weight_decay": 0.1}}, "train.weight_decay differs: 0.1 now, 0.01 there"),
    ({"search": {**SEARCH, "weight_decay": 0.0}},  # a constant under search: fixed too
     "train.weight_decay differs: 0.0 now, 0.01 there"),
    ({"data": {"task": "mrpc"}}, "data.task differs: 'mrpc' now, 'sst2' there"),
    ({"data": {"task": "sst2", "max_train_samples": 500}},
     "data.max_train_samples differs: 500 now, None there"),
    ({"metric": "eval_loss", "mode": "min"},
     "metric differs: 'eval_loss' (min) now, 'eval_accuracy' (max) there"),
    ({"objectives": [{"metric": "eval_accuracy", "mode": "max"},
                     {"metric": "latency_ms_b1", "mode": "min"}]},
     "objective 'latency_ms_b1' was never reported there"),
])
def test_a_different_fixed_setting_is_refused_naming_it(tmp_path, change, message):
    folder = earlier_run(tmp_path, experiment(), LRS)
    target = experiment(**{"search_alg": {"type": "optuna"}, **change})
    assert refusal(target, folder).startswith(f"--warm-start {folder}: {message}")


def test_data_without_a_named_dataset_is_compared_field_by_field(tmp_path):
    """A task whose settings have no `data.task` (seq2seq, tagging, images): its data
    section is compared as it is, and a difference named."""
    pairs = {"kind": "seq2seq", "train_file": {"source": "t.de", "target": "t.en"},
             "eval_file": "val", "source_lang": "de", "target_lang": "en"}

    def translation(data=None, **extra):
        return experiment(metric="eval_bleu", data={**pairs, **(data or {})}, **extra)

    folder = earlier_run(tmp_path, translation(), LRS,
                         reported={i: {"eval_bleu": 10.0 + i} for i in range(2)})
    assert load_observations(translation(search_alg=TPE), [folder]).imported == [2]
    assert refusal(translation({"source_lang": "en", "target_lang": "de"}, search_alg=TPE),
                   folder).startswith(f"--warm-start {folder}: data.source_lang differs: "
                                      "'en' now, 'de' there")


def test_a_different_batch_schedule_is_compared_by_its_phases(tmp_path):
    phases = {"ramp": [[0.0, 16], [0.5, 32]], "same": [[0.0, 16], [0.5, 32]],
              "other": [[0.0, 16], [0.25, 32]]}
    folder = earlier_run(tmp_path, experiment(batch_schedules=phases,
                                              train={"batch_schedule": "ramp"}), LRS)
    renamed = experiment(search_alg=TPE, batch_schedules=phases,
                         train={"batch_schedule": "same"})
    assert load_observations(renamed, [folder]).imported == [2]
    moved = experiment(search_alg=TPE, batch_schedules=phases,
                       train={"batch_schedule": "other"})
    assert "train.batch_schedule differs: [(0.0, 16), (0.25, 32)] now, [(0.0, 16), " \
           "(0.5, 32)] there" in refusal(moved, folder)


def test_a_key_searched_there_and_fixed_now_skips_the_trials_that_ran_another(tmp_path):
    searched = {**SEARCH, "model.name": {"choice": ["m", "small"]},
                "model.max_length": {"choice": [64, 128]}}
    earlier = experiment(search=searched)
    both = earlier_run(tmp_path / "both", earlier, [
        {"learning_rate": 1e-4, "model.name": "m", "model.max_length": 64},
        {"learning_rate": 2e-4, "model.name": "small", "model.max_length": 64}])
    (tmp_path / "one").mkdir()
    one = earlier_run(tmp_path / "one", earlier, [
        {"learning_rate": 1e-4, "model.name": "small", "model.max_length": 64},
        {"learning_rate": 2e-4, "model.name": "small", "model.max_length": 64}])
    target = experiment(search_alg=TPE, model={"name": "small", "max_length": 64})
    seen = load_observations(target, [one])  # every trial ran the model fixed now
    assert seen.points == LRS and seen.imported == [2] and seen.skipped == [{}]
    seen = load_observations(target, [both])  # narrowing a search: the other model's left
    assert seen.points == LRS[1:] and seen.imported == [1]
    assert seen.skipped == [{"ran model.name != 'small'": 1}]
    assert seen.record()[0]["skipped"] == 1
    longer = experiment(search_alg=TPE, model={"name": "small", "max_length": 128})
    assert refusal(longer, one) == (
        f"--warm-start {one}: none of its 2 finished trials ran with the settings now: "
        "2 ran model.max_length != 128")


FREEZE = {**SEARCH, "freeze_layers": {"choice": [0, 1, 2]}}
FROZEN = [{"learning_rate": 1e-4, "freeze_layers": 0}, {"learning_rate": 2e-4, "freeze_layers": 2},
          {"learning_rate": 3e-4, "freeze_layers": 1}]


def test_fixing_a_searched_key_skips_and_counts_the_trials_that_ran_another_value(tmp_path):
    folder = earlier_run(tmp_path, experiment(search=FREEZE), FROZEN)
    seen = load_observations(experiment(search_alg=TPE, train={"freeze_layers": 0}), [folder])
    assert seen.points == [{"learning_rate": 1e-4}] and seen.imported == [1]
    assert seen.metrics == [{"eval_accuracy": pytest.approx(0.6)}]
    assert seen.skipped == [{"ran train.freeze_layers != 0": 2}]
    assert seen.skip_text() == "2 ran train.freeze_layers != 0"


def test_a_value_outside_the_domain_now_skips_and_counts_the_trial(tmp_path):
    folder = earlier_run(tmp_path, experiment(search=FREEZE), FROZEN)
    narrower = {**SEARCH, "freeze_layers": {"choice": [0, 1]}}
    seen = load_observations(experiment(search_alg=TPE, search=narrower), [folder])
    assert seen.points == [FROZEN[0], FROZEN[2]] and seen.imported == [2]
    assert seen.skipped == [{"ran freeze_layers outside choice [0, 1]": 1}]
    none = {**SEARCH, "freeze_layers": {"choice": [3]}}
    assert refusal(experiment(search_alg=TPE, search=none), folder) == (
        f"--warm-start {folder}: none of its 3 finished trials ran with the settings now: "
        "3 ran freeze_layers outside choice [3]")


def test_a_searched_schedule_name_is_compared_by_its_phases_per_trial(tmp_path):
    schedules = {"search": {**SEARCH, "batch_schedule": {"choice": ["ramp", "none"]}}}
    folder = earlier_run(tmp_path, experiment(
        **schedules, batch_schedules={"ramp": [[0.0, 16], [0.5, 32]]}), [
        {"learning_rate": 1e-4, "batch_schedule": "ramp"},
        {"learning_rate": 2e-4, "batch_schedule": "none"}])
    same = experiment(search_alg=TPE, **schedules,
                      batch_schedules={"ramp": [[0.0, 16], [0.5, 32]]})
    assert load_observations(same, [folder]).imported == [2]
    moved = experiment(search_alg=TPE, **schedules,
                       batch_schedules={"ramp": [[0.0, 16], [0.25, 64]]})
    seen = load_observations(moved, [folder])  # the name is the same, the phases are not
    assert seen.points == [{"learning_rate": 2e-4, "batch_schedule": "none"}]
    assert seen.skipped == [{"ran train.batch_schedule 'ramp': [(0.0, 16), (0.25, 64)] now, "
                             "[(0.0, 16), (0.5, 32)] there": 1}]


def test_a_searched_model_name_is_compared_by_its_folder_per_trial(tmp_path, monkeypatch):
    small = tmp_path / "models" / "small"
    small.mkdir(parents=True)
    (small / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    names = {"search": {**SEARCH, "model.name": {"choice": ["m", "models/small"]}}}
    params = [{"learning_rate": 1e-4, "model.name": "m"},
              {"learning_rate": 2e-4, "model.name": "models/small"}]
    there = {"m": "/models/m", "models/small": str(small)}
    folder = earlier_run(tmp_path / "run", experiment(**names), params,
                         derived={"model_paths": there})
    assert load_observations(experiment(search_alg=TPE, **names), [folder]).imported == [2]
    moved = {**there, "models/small": "/elsewhere/small"}  # the name meant another folder
    (tmp_path / "moved").mkdir()
    folder = earlier_run(tmp_path / "moved", experiment(**names), params,
                         derived={"model_paths": moved})
    seen = load_observations(experiment(search_alg=TPE, **names), [folder])
    assert seen.points == params[:1]
    assert seen.skipped == [{f"ran model.name 'models/small': {str(small)!r} now, "
                             "'/elsewhere/small' there": 1}]


@pytest.mark.parametrize("key, value", [("seed", 7), ("eval_batch_size", 16),
                                        ("precision", "fp32")])
def test_settings_that_change_no_objective_are_not_compared(tmp_path, key, value):
    folder = earlier_run(tmp_path, experiment(), LRS)
    seen = load_observations(experiment(search_alg=TPE, train={key: value}), [folder])
    assert seen.points == LRS and seen.skipped == [{}]


def test_the_micro_batch_is_compared_only_where_batchnorm_trains(tmp_path):
    (tmp_path / "eval").mkdir()
    folder = earlier_run(tmp_path / "eval", experiment(train={"batchnorm": "eval"}), LRS)
    gpu = experiment(search_alg=TPE, train={"batchnorm": "eval", "max_micro_batch": 128})
    assert load_observations(gpu, [folder]).imported == [2]  # the same effective batch
    trains = experiment(search_alg=TPE, train={"batchnorm": "train", "max_micro_batch": 128})
    assert "train.max_micro_batch differs: 128 now, 32 there" in refusal(trains, folder)
    (tmp_path / "train").mkdir()
    folder = earlier_run(tmp_path / "train", experiment(), LRS)  # batchnorm: train there
    frozen = experiment(search_alg=TPE, train={"batchnorm": "eval", "max_micro_batch": 128})
    assert "train.max_micro_batch differs: 128 now, 32 there" in refusal(frozen, folder)


GOALS = [{"metric": "eval_accuracy", "mode": "max"}, {"metric": "latency_ms_b1", "mode": "min"}]


def test_another_objective_needs_only_to_have_been_reported_there(tmp_path):
    # a single-objective run whose trials recorded latency warm-starts a two-objective one
    folder = earlier_run(tmp_path, experiment(), LRS + [{"learning_rate": 3e-4}],
                         reported={0: {"latency_ms_b1": 2.5}, 1: {"latency_ms_b1": 1.5}})
    seen = load_observations(experiment(search_alg={"type": "optuna"}, objectives=GOALS),
                             [folder])
    assert seen.points == LRS  # the third reported no latency: skipped, named
    assert seen.values(experiment(objectives=GOALS).objective_list()) == [
        [pytest.approx(0.6), 2.5], [pytest.approx(0.7), 1.5]]
    assert seen.skipped == [{"reported no finite latency_ms_b1": 1}]
    first = [{"metric": "eval_loss", "mode": "min"}, {"metric": "eval_accuracy", "mode": "max"}]
    other = experiment(search_alg={"type": "optuna"}, objectives=first, metric="eval_loss",
                       mode="min")  # the first objective is the one trials were stopped on
    assert "metric differs: 'eval_loss' (min) now, 'eval_accuracy' (max) there" in \
        refusal(other, folder)


def test_a_model_named_by_another_path_to_the_same_folder_is_the_same(tmp_path, monkeypatch):
    model = tmp_path / "models" / "tiny"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    folder = earlier_run(tmp_path / "run", experiment(model={"name": "models/tiny"}), LRS)
    record = json.loads((tmp_path / "run" / CONFIG_FILE).read_text())
    record["model_path"] = str(model)  # as runner.prepare records it: resolved
    (tmp_path / "run" / CONFIG_FILE).write_text(json.dumps(record))
    target = experiment(search_alg=TPE, model={"name": str(model)})
    assert load_observations(target, [folder]).imported == [2]


QA = {"kind": "question_answering", "train_file": "t.json", "eval_file": "d.json"}
STRIDES = [{"learning_rate": 1e-4, "data.doc_stride": 16},
           {"learning_rate": 2e-4, "data.doc_stride": 24}]


def qa_experiment(data=None, **extra):
    return validate_config({"name": "x", "model": {"name": "m"}, "data": {**QA, **(data or {})},
                            "search": SEARCH, **extra})


def test_a_searched_stride_is_compared_per_trial_like_the_model(tmp_path):
    """A task without named datasets (no `data.task`) is compared as a section, and its
    searched encoding setting (question answering's data.doc_stride) per trial."""
    earlier = qa_experiment(search={**SEARCH, "data.doc_stride": {"choice": [16, 24]}})
    folder = earlier_run(tmp_path, earlier, STRIDES,
                         reported={0: {"eval_f1": 40.0}, 1: {"eval_f1": 50.0}})
    seen = load_observations(qa_experiment({"doc_stride": 16}, search_alg=TPE), [folder])
    assert seen.points == LRS[:1] and seen.metrics == [{"eval_f1": 40.0}]
    assert seen.skipped == [{"ran data.doc_stride != 16": 1}]
    seen = load_observations(qa_experiment(search_alg=TPE, search={
        **SEARCH, "data.doc_stride": {"choice": [24, 16]}}), [folder])
    assert seen.points == STRIDES and seen.imported == [2]
    assert refusal(qa_experiment({"doc_stride": 16, "n_best": 5}, search_alg=TPE),
                   folder).startswith(f"--warm-start {folder}: data.n_best differs: 5 now, "
                                      "20 there")
