"""Question answering end to end through the real CLI: experiments/squad_quick.yaml with a tiny
random BERT on a small subset of the real SQuAD files, a grid over data.doc_stride (two
encodings, two window counts) under ASHA; then analyze, compare, export. The exported folder
loads with AutoModelForQuestionAnswering, scores the eval questions as the trial did, and the
model card's own lines answer a question of the eval file as the trial's decoding does.

One test runs by default (tune then export, ~45 s on 2 quiet cores); the rest of the tool
(TensorBoard, analyze, PBT with confirm and replay, LoRA, two workers, warm start, the GPU
example) is marked slow."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from support import REPO, run_card, run_cli

SQUAD = REPO.parent / "shared" / "data" / "squad"
TRAIN_QUESTIONS, EVAL_QUESTIONS = 96, 48
STRIDES = (24, 16)  # the first-listed encoding has more windows: a larger budget in samples


SEARCH = {  # one trial per stride: a grid over it, the learning rate drawn per trial
    "search_alg.type": "grid", "search.data.doc_stride": f"{{grid: {list(STRIDES)}}}",
    "search.batch_size": 16, "search.warmup_ratio": 0.1,
    "search.learning_rate": "{loguniform: [5.0e-4, 2.0e-3]}", "run.num_samples": 1}


def overrides(model, storage, **settings) -> list[str]:
    """squad_quick.yaml made small for a tiny model; `settings` (dotted keys) on top."""
    values = {"model.name": model, "model.max_length": 80, "data.doc_stride": 16,
              "data.max_train_samples": TRAIN_QUESTIONS,
              "data.max_eval_samples": EVAL_QUESTIONS, "data.n_best": 80,
              "train.max_epochs": 1, "train.eval_every_epochs": 0.5,
              "train.max_micro_batch": 16, **SEARCH, "run.checkpoint_every": 1,
              "run.storage_path": storage, **settings}
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def qa_run(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("qa")
    done = run_cli("tune", "experiments/squad_quick.yaml", *overrides(
        tiny_bert, root / "results", **{"tracking.tensorboard": "true"}))
    return done, root / "results" / "squad_quick"


def trial_rows(experiment) -> dict[str, list[dict]]:
    return {trial.name: [json.loads(line) for line in
                         (trial / "result.json").read_text().splitlines()]
            for trial in experiment.iterdir() if (trial / "result.json").is_file()}


def test_tune_a_stride_grid_then_export_answers_as_the_trial(qa_run, tmp_path):
    """The one default end-to-end test (the rest are slow): `raytune-ft tune` through Ray's
    Tuner, then `raytune-ft export`, on the real SQuAD files."""
    done, experiment = qa_run
    check_tune(done, experiment)
    check_export(experiment, tmp_path)


def check_tune(done, experiment) -> None:
    """Trials train on windows, one encoding per stride, and report the official scores."""
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "data         squad: " in out
    assert f"questions    train {TRAIN_QUESTIONS} (" in out and f"eval {EVAL_QUESTIONS} (" in out
    # the windows differ by stride: one text per encoding, after its stride
    assert "windows      max_length 80, data.doc_stride 24: train " in out
    assert "; max_length 80, data.doc_stride 16: train " in out
    assert "answers lost to truncation: 0 train, 0 eval" in out
    assert "answers      SQuAD 2.0: the empty answer when" in out
    assert "data.doc_stride [24, 16]: 2 tokenizations" in out
    assert "samples per trial (1 epochs, by tokenization)" in out
    assert "best         eval_f1=" in out
    record = json.loads((experiment / "raytune_ft.json").read_text())
    budgets = [record["plan"]["budget"], *record["plan"]["other_budgets"]]
    assert (record["train_examples"], record["eval_examples"]) == (TRAIN_QUESTIONS,
                                                                   EVAL_QUESTIONS)
    assert record["train_samples"] == budgets[0]["n_train"]  # the first encoding's windows
    windows = {b["n_train"] for b in budgets}
    assert len(windows) == 2  # the two strides cut the same questions into other counts
    rows = trial_rows(experiment)
    assert len(rows) == 2 and {r[0]["config"]["data.doc_stride"] for r in rows.values()} == \
        set(STRIDES)
    for reports in rows.values():
        n_train = {round(r["samples_seen"] / r["epoch"]) for r in reports}
        assert len(n_train) == 1 and n_train <= windows  # samples are the trial's windows
        budget = next(b for b in budgets if b["n_train"] in n_train)
        for r in reports:
            assert r["samples_seen"] == budget["evaluation_points"][r["training_iteration"] - 1]
            assert 0.0 <= r["eval_exact"] <= r["eval_f1"] <= 100.0
            assert {"eval_HasAns_f1", "eval_NoAns_f1", "eval_loss"} <= set(r)
            assert r["config"]["data.doc_stride"] in STRIDES and r["diverged"] is False
    # a trial that ran its two evaluations reached its own budget, whatever its windows (the
    # record's budget_samples is the first encoding's, more than the stride-16 trial's)
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    for trial in trials.itertuples():
        assert trial.status == ("terminated" if trial.last_iteration == 2 else "stopped")


@pytest.mark.slow  # reads the default test's run (~1 min on 2 cores when run alone)
def test_tensorboard_has_the_squad_scores_against_windows_seen(qa_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, experiment = qa_run
    for name, reports in trial_rows(experiment).items():
        events = EventAccumulator(str(experiment / name))
        events.Reload()
        for metric in ("eval_f1", "eval_exact", "eval_HasAns_f1", "eval_NoAns_f1"):
            scalars = events.Scalars(metric)
            assert [s.step for s in scalars] == [r["samples_seen"] for r in reports]
            assert [s.value for s in scalars] == pytest.approx([r[metric] for r in reports])
        session = plugin_data_pb2.HParamsPluginData.FromString(events.PluginTagToContent(
            "hparams")["_hparams_/session_start_info"]).session_start_info
        assert session.hparams["data.doc_stride"].number_value in STRIDES


@pytest.mark.slow  # reads the default test's run (~1 min on 2 cores when run alone)
def test_analyze_and_compare_see_the_searched_stride(qa_run):
    _, experiment = qa_run
    done = run_cli("analyze", str(experiment))
    assert done.returncode == 0, done.stderr[-2000:]
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    assert set(trials["hp_data.doc_stride"]) <= set(STRIDES)
    assert trials["best_metric"].between(0, 100).all()
    done = run_cli("compare", str(experiment), "--format", "csv")
    assert done.returncode == 0 and "eval_f1" in done.stdout.splitlines()[0]


def check_export(experiment, tmp_path) -> None:
    """Exported from another working directory, the folder scores the eval questions as the
    trial did, and the card's answer() answers a question as the trial's decoding does."""
    from transformers import AutoModelForQuestionAnswering

    out = tmp_path / "reader"
    # from another directory: the record holds the data files (relative to the repository
    # in squad_quick.yaml) as absolute paths, so the card's example still reads them
    done = run_cli("export", str(experiment), "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "raytune_ft_export.json").read_text())
    stride = info["hyperparameters"]["data.doc_stride"]
    card = (out / "README.md").read_text()
    assert "pipeline_tag: question-answering" in card and "| data.doc_stride * |" in card
    assert f"windows sharing {stride} tokens (doc_stride)" in card
    # the exported folder scores the eval questions as the trial did, with its own stride
    model = AutoModelForQuestionAnswering.from_pretrained(out)
    task, data, bundle = trial_bundle(experiment, out, stride)
    # examples are questions; the windows are the trial's own (its stride's), eval windows
    # differ by stride so the card leaves them out
    assert (f"- examples: {TRAIN_QUESTIONS} train, {EVAL_QUESTIONS} dev/eval; windows: "
            f"{len(bundle.train)} train\n") in card
    assert info["data"] == {"task": data.source, "train_examples": TRAIN_QUESTIONS,
                            "eval_examples": EVAL_QUESTIONS, "samples_are": "windows",
                            "train_samples": len(bundle.train), "eval_samples": None}
    assert one_worker_f1(model, task, bundle) == pytest.approx(info["metrics"]["eval_f1"],
                                                               abs=1e-9)
    # the card's own lines, run as a user would, answer its question as the trial decodes it
    namespace = run_card(out)
    said = namespace["answer"](namespace["question"], namespace["context"])
    assert (said, namespace["context"]) == decoded(model, task, bundle, card)


def trial_bundle(experiment, out, stride):
    """(task, data settings, data) of a trial of `experiment` at `stride`, tokenized by the
    exported folder `out`."""
    from raytune_ft.experiment import read_experiment_record
    from raytune_ft.schema import trial_data, trial_model
    from raytune_ft.tasks import task_for

    config = read_experiment_record(str(experiment))
    sampled = {"data.doc_stride": stride}
    data, model_settings = trial_data(config, sampled), trial_model(config, sampled)
    task = task_for(data)
    return task, data, task.load_data(data, str(out), model_settings.max_length)


def one_worker_f1(model, task, bundle) -> float:
    """eval_f1 of `model` on the eval windows, evaluated by one process."""
    from raytune_ft.config import TrainConfig
    from raytune_ft.training.loop import FineTuneLoop

    return FineTuneLoop(model, bundle, TrainConfig(), "eval_f1", "max",
                        task=task).evaluate()["eval_f1"]


def decoded(model, task, bundle, card: str) -> tuple[str, str]:
    """(the trial's answer, its context) of the card's question: the eval windows in four
    batches through the task's own predict and decoding."""
    import torch

    from raytune_ft.tasks.question_answering import answers

    split = bundle.eval
    q = split.question_ids.index(card.split("# question ", 1)[1].split()[0])
    predictions = []
    with torch.no_grad():
        for indices in np.array_split(np.arange(len(split)), 4):
            batch = task.collate(bundle, split, indices)
            predictions.append((indices, task.predict(task.forward(model.eval(), batch),
                                                      batch)))
    return answers(split, predictions)[q], split.contexts[split.context_of[q]]


# ------------------------------------------------------------------ slow: the rest of the tool


def test_bad_qa_files_are_refused_before_ray_starts(tmp_path, tiny_bert):
    rows = [{"id": "a", "question": "Who?", "context": "Ann met Bob.",
             "answers": {"text": ["Bob"], "answer_start": [8]}}]
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(rows[0]) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(rows[0]) + "\n" + json.dumps(
        {**rows[0], "id": "b", "answers": {"text": ["Bob"], "answer_start": [7]}}) + "\n")
    done = run_cli("tune", "experiments/squad_quick.yaml",
                   *overrides(tiny_bert, tmp_path / "results", **{
                       "data.train_file": good, "data.eval_file": bad}))
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.strip() == (
        f"error: experiments/squad_quick.yaml: data.eval_file: {bad} line 2: question b: "
        "answer 1 'Bob' is not at answer_start 7 of its context (there: ' Bo'); answer_start "
        "must index the answer text in the context")
    results = tmp_path / "results"  # the storage root is checked first: empty, no Ray
    assert not results.exists() or not any(results.iterdir())


@pytest.mark.slow  # encodes all 23,682 questions at 384 tokens (~10-50 s on 2 cores)
def test_the_gpu_example_validates_with_a_local_model(tmp_path, tiny_bert):
    """experiments/squad_bert.yaml as written; only what this machine lacks is overridden."""
    done = run_cli("validate", "experiments/squad_bert.yaml",
                   "--set", f"model.name={tiny_bert}", "--set", "resources.gpus_per_trial=0",
                   "--set", "resources.cpus_per_trial=1",
                   "--set", f"run.storage_path={tmp_path / 'results'}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "questions    train 16592 (739 unanswerable)" in done.stdout
    assert "eval 7090 (519 unanswerable)" in done.stdout
    assert "of <= 384 tokens sharing 128 (data.doc_stride)" in done.stdout


@pytest.mark.slow  # PBT, then confirm and replay: three Ray runs (~3-6 min on 2 cores)
def test_pbt_mutates_the_batch_of_windows_then_confirm_and_replay(tmp_path, tiny_bert):
    storage = tmp_path / "results"
    done = run_cli("tune", "experiments/squad_quick.yaml", *overrides(
        tiny_bert, storage, **{
            "search_alg.type": "random", "search.data.doc_stride": 16,
            "search.batch_size": "{choice: [8, 16]}", "run.num_samples": 2,
            "train.eval_every_epochs": 0.25,
            "scheduler": "{type: pbt, perturbation_interval: 1, quantile_fraction: 0.5, "
                         "mutations: [learning_rate, batch_size]}"}))
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = storage / "squad_quick"
    budget = json.loads((experiment / "raytune_ft.json").read_text())["plan"]["budget"]
    for reports in trial_rows(experiment).values():  # samples_seen counts windows
        for r in reports:
            assert r["samples_seen"] == budget["evaluation_points"][r["training_iteration"] - 1]
            assert r["batch_size"] in (8, 16)
    assert run_cli("analyze", str(experiment)).returncode == 0
    events = pd.read_parquet(experiment / "analysis" / "pbt_events.parquet")
    assert len(events) >= 1  # an exploit, whose explore changed what the clone trains with
    assert ((events["new_hp_learning_rate"] != events["donor_hp_learning_rate"])
            | (events["new_hp_batch_size"] != events["donor_hp_batch_size"])).any()
    done = run_cli("confirm", str(experiment), "--top", "1", "--seeds", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_parquet(experiment / "analysis" / "confirm.parquet")
    assert len(rows) == 2 and (rows["status"] == "finished").all()
    assert rows["metric"].between(0, 100).all()
    done = run_cli("replay", str(experiment))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval_f1=" in done.stdout


@pytest.mark.slow  # LoRA trials, then two exports (~2-4 min on 2 cores)
def test_lora_trains_the_qa_head_and_both_exports_answer(tmp_path, tiny_bert):
    storage = tmp_path / "results"
    done = run_cli("tune", "experiments/squad_quick.yaml", *overrides(
        tiny_bert, storage, **{"train.lora_r": 4, "search.data.doc_stride": 16}))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained in full: qa_outputs" in done.stdout
    experiment = storage / "squad_quick"
    from transformers import AutoModelForQuestionAnswering

    said = {}
    for form, extra in (("merged", []), ("adapter", ["--adapter"])):
        out = tmp_path / form
        done = run_cli("export", str(experiment), "--out", str(out), *extra)
        assert done.returncode == 0, done.stderr[-3000:]
        namespace = run_card(out)
        said[form] = namespace["answer"](namespace["question"], namespace["context"])
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "PeftModel.from_pretrained(base" in card
    # both cards answer as the trial decodes the question (the merged weights, its windows)
    model = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "merged")
    task, _, bundle = trial_bundle(experiment, tmp_path / "merged", 16)
    expected, context = decoded(model, task, bundle, card)
    assert namespace["context"] == context
    assert said == {"merged": expected, "adapter": expected}


@pytest.mark.slow  # one trial on two data-parallel workers (~1-2 min on 2 cores)
def test_a_two_worker_trial_gathers_every_window(tmp_path, tiny_bert):
    storage = tmp_path / "results"
    done = run_cli("tune", "experiments/squad_quick.yaml", *overrides(
        tiny_bert, storage, **{"resources.workers_per_trial": 2, "search.data.doc_stride": 16,
                               "resources.cpus_per_trial": 1}))
    assert done.returncode == 0, done.stderr[-3000:]
    experiment = storage / "squad_quick"
    (reports,) = trial_rows(experiment).values()
    assert "workers      2 per trial" in done.stdout
    # the exported model (the trial's last checkpoint) scored by one process gives the
    # eval_f1 the two workers reported: each scored its share and every window was gathered
    from transformers import AutoModelForQuestionAnswering

    out = tmp_path / "reader"
    done = run_cli("export", str(experiment), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "raytune_ft_export.json").read_text())
    (reported,) = [r for r in reports if r["training_iteration"] == info["iteration"]]
    task, _, bundle = trial_bundle(experiment, out, 16)
    model = AutoModelForQuestionAnswering.from_pretrained(out)
    assert one_worker_f1(model, task, bundle) == pytest.approx(reported["eval_f1"], abs=1e-9)


@pytest.mark.slow  # a second search warm-started from the first (~1-2 min on 2 cores)
def test_warm_start_compares_the_stride_per_trial(qa_run, tmp_path, tiny_bert):
    _, source = qa_run
    storage = tmp_path / "results"
    settings = {"search_alg.type": "tpe", "search_alg.n_initial_points": 1,
                "search.data.doc_stride": f"{{choice: {list(STRIDES)}}}",
                "run.num_samples": 1, "name": "squad_warm"}
    done = run_cli("tune", "experiments/squad_quick.yaml",
                   *overrides(tiny_bert, storage, **settings), "--warm-start", str(source))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warm start   2 of 2 trials imported" in done.stdout
    # narrowed to one stride: the trial that ran the other is skipped, and counted
    settings["search.data.doc_stride"] = "{choice: [16]}"
    done = run_cli("tune", "experiments/squad_quick.yaml",
                   *overrides(tiny_bert, storage, **settings), "--warm-start", str(source),
                   "--overwrite")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warm start   1 of 2 trials imported" in done.stdout
    assert "skipped: 1 ran data.doc_stride outside choice [16]" in done.stdout
