"""Translation end to end through the real CLI: experiments/multi30k_quick.yaml with a tiny
random Marian model on a small subset of the real Multi30K files (research and education use
only), then analyze, export (the folder loads with AutoModelForSeq2SeqLM and the card's own
lines translate a sentence of the eval file); confirm, replay, PBT with batch-size mutation,
LoRA and two data-parallel workers are slow tests."""

import json
import math

import pandas as pd
import pytest
import torch
from support import MULTI30K, card_code, read_results, run_card, run_cli

TRAIN_PAIRS, EVAL_PAIRS = 96, 12
SMALL = [f"data.max_train_samples={TRAIN_PAIRS}", f"data.max_eval_samples={EVAL_PAIRS}",
         "data.generation.max_new_tokens=12", "model.max_length=32",
         "data.max_target_length=32", "train.max_epochs=1", "train.eval_every_epochs=0.5",
         "train.max_micro_batch=16", "train.eval_batch_size=6", "search_alg.n_initial_points=1",
         "search.batch_size={choice: [16, 32]}"]


def tune(root, model, *overrides, name="multi30k_quick"):
    sets = [f"model.name={model}", f"run.storage_path={root / 'results'}", f"name={name}",
            *SMALL, *overrides]
    done = run_cli("tune", "experiments/multi30k_quick.yaml",
                   *(arg for o in sets for arg in ("--set", o)))
    return done, root / "results" / name


@pytest.fixture(scope="module")
def translation_run(tmp_path_factory, tiny_marian):
    root = tmp_path_factory.mktemp("translation")
    return tune(root, tiny_marian, "run.num_samples=2")


def test_tune_reports_bleu_loss_and_generation_time(translation_run):
    done, experiment = translation_run
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert f"data         translation: {TRAIN_PAIRS} train, {EVAL_PAIRS} eval\n" in out
    assert "generation   greedy, at most 12 new tokens" in out
    assert "scores       sacreBLEU BLEU (13a tokenizer, cased); chrF" in out
    assert "best         eval_bleu=" in out
    trials = [p for p in experiment.iterdir() if (p / "result.json").is_file()]
    assert len(trials) == 2
    for trial in trials:
        rows = read_results(trial)
        assert [r["samples_seen"] for r in rows] == [48, 96]
        for row in rows:
            assert 0.0 <= row["eval_bleu"] <= 100.0 and 0.0 <= row["eval_chrf"] <= 100.0
            assert row["eval_loss"] > 0 and math.isfinite(row["eval_loss"])
            assert 1.0 <= row["eval_gen_len"] <= 12.0
            assert 0 < row["eval_predict_s"] <= row["eval_s"]  # the generation, timed
            assert row["latency_ms_b1"] > 0 and row["trainable_param_count"] > 0
            assert "eval_rouge1" not in row
    record = json.loads((experiment / "raytune_ft.json").read_text())
    assert record["label_names"] == [] and record["eval_samples"] == EVAL_PAIRS


def test_analyze_and_compare(translation_run):
    _, experiment = translation_run
    assert run_cli("analyze", str(experiment)).returncode == 0
    iterations = pd.read_parquet(experiment / "analysis" / "iterations.parquet")
    assert {"eval_bleu", "eval_chrf", "eval_gen_len", "eval_predict_s"} <= set(iterations)
    share = iterations.groupby("trial_id")["eval_predict_s"].sum()
    assert (share > 0).all()
    done = run_cli("compare", str(experiment), "--format", "csv")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "eval_bleu" in done.stdout.splitlines()[0]


def test_export_translates_with_the_cards_own_lines(translation_run, tmp_path):
    """transformers 5 removed the translation and text2text-generation pipelines: the card
    loads the folder with the Auto classes, and its lines translate the eval file's first
    sentence as generate() with the exported generation config does."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    _, experiment = translation_run
    out = tmp_path / "translator"
    done = run_cli("export", str(experiment), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    model = AutoModelForSeq2SeqLM.from_pretrained(out)
    assert model.generation_config.num_beams == 4  # final_num_beams of the experiment
    assert model.generation_config.max_new_tokens == 12
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text2text-generation" in card and "- languages: de -> en" in card
    assert "- labels:" not in card and "eval_bleu" in card
    first = (MULTI30K / "test_2016_flickr.de").read_text().splitlines()[0]
    assert repr(first) in card  # the card translates a sentence of the eval file
    namespace = run_card(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        generated = model.generate(**tokenizer(first, return_tensors="pt"), num_beams=4)
    assert namespace["translated"] == tokenizer.decode(generated[0], skip_special_tokens=True)
    assert namespace["generated"].shape[1] <= 1 + 12  # the start token and 12 new at most


@pytest.mark.slow  # two more Ray runs
def test_confirm_generates_with_the_final_beams(translation_run):
    _, experiment = translation_run
    done = run_cli("confirm", str(experiment), "--top", "1", "--seeds", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    from raytune_ft.experiment import read_experiment_record

    confirmed = read_experiment_record(str(experiment.parent / "multi30k_quick-confirm"))
    assert confirmed.data.generation.num_beams == 4  # final_num_beams in force
    assert read_experiment_record(str(experiment)).data.generation.num_beams == 1
    rows = pd.read_parquet(experiment / "analysis" / "confirm.parquet")
    assert len(rows) == 2 and rows["metric"].between(0, 100).all()


@pytest.mark.slow  # one more Ray run
def test_a_warm_start_imports_the_translation_trials_and_tensorboard_tracks(
        translation_run, tmp_path, tiny_marian):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, experiment = translation_run
    sets = [f"model.name={tiny_marian}", f"run.storage_path={tmp_path / 'again'}", *SMALL,
            "run.num_samples=1", "tracking.tensorboard=true"]
    done = run_cli("tune", "experiments/multi30k_quick.yaml", "--warm-start", str(experiment),
                   *(arg for o in sets for arg in ("--set", o)))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "warm start   2 of 2 trials imported from 1 experiment" in done.stdout
    trial = next(p for p in (tmp_path / "again" / "multi30k_quick").iterdir()
                 if (p / "result.json").is_file())
    rows = read_results(trial)
    events = EventAccumulator(str(trial))
    events.Reload()
    for metric in ("eval_bleu", "eval_chrf", "eval_gen_len", "eval_predict_s"):
        scalars = events.Scalars(metric)
        assert [s.step for s in scalars] == [r["samples_seen"] for r in rows], metric
        assert [s.value for s in scalars] == pytest.approx([r[metric] for r in rows],
                                                           rel=1e-6), metric


@pytest.mark.slow
def test_pbt_mutates_the_batch_size_and_replays(tmp_path, tiny_marian):
    scheduler = ("scheduler={type: pbt, perturbation_interval: 1, quantile_fraction: 0.5, "
                 "mutations: [learning_rate, batch_size]}")
    done, experiment = tune(tmp_path, tiny_marian, scheduler, "run.num_samples=2",
                            "train.eval_every_epochs=0.25", "search_alg={type: random}",
                            name="s2s_pbt")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [r for trial in experiment.iterdir() if (trial / "result.json").is_file()
            for r in read_results(trial)]
    assert rows and all(math.isfinite(r["eval_loss"]) for r in rows)
    assert {r["samples_seen"] for r in rows} <= {24, 48, 72, 96}
    assert {r["batch_size"] for r in rows} <= {16, 32}
    done = run_cli("replay", str(experiment))  # the best trial's schedule from scratch
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval_bleu=" in done.stdout


@pytest.mark.slow
def test_lora_adapts_both_stacks_and_exports_merged(tmp_path, tiny_marian):
    pytest.importorskip("peft")
    from safetensors.torch import load_file

    done, experiment = tune(tmp_path, tiny_marian, "train.lora_r=4", "run.num_samples=1",
                            "search.learning_rate={loguniform: [1.0e-3, 1.0e-2]}", name="s2s_lora")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "lora         rank 4 on all-linear (16 linear layers)" in done.stdout
    saved = load_file(next(experiment.glob("*/checkpoint_*")) / "model.safetensors")
    assert saved and all("lora_" in key for key in saved)
    assert any(".encoder." in key for key in saved) and any("encoder_attn" in key
                                                            for key in saved)
    out, adapter = tmp_path / "merged", tmp_path / "adapter"
    assert run_cli("export", str(experiment), "--out", str(out)).returncode == 0
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    merged = AutoModelForSeq2SeqLM.from_pretrained(out)  # a plain model: peft not needed
    assert not any("lora" in name for name, _ in merged.named_parameters())
    # the adapter folder's card loads the base with peft and translates as the merged model
    done = run_cli("export", str(experiment), "--out", str(adapter), "--adapter")
    assert done.returncode == 0, done.stderr[-3000:]
    code = card_code(adapter)
    assert "PeftModel.from_pretrained(base" in code and "num_labels" not in code
    assert (adapter / "generation_config.json").is_file()  # the tuned beams, beside the adapter
    namespace = run_card(adapter, code)
    tokenizer = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        generated = merged.generate(**tokenizer(namespace["source"], return_tensors="pt"))
    assert namespace["translated"] == tokenizer.decode(generated[0], skip_special_tokens=True)


@pytest.mark.slow
def test_two_workers_gather_the_generated_text(tmp_path, tiny_marian):
    """A trial of two data-parallel workers generates for its deal of the eval batches on
    each worker and scores the gathered text: its reported BLEU is the one a single process
    computes from the same checkpoint."""
    from safetensors.torch import load_model

    from raytune_ft.config import TrainConfig
    from raytune_ft.experiment import read_experiment_record
    from raytune_ft.tasks import task_for
    from raytune_ft.training.loop import FineTuneLoop

    done, experiment = tune(tmp_path, tiny_marian, "run.num_samples=1", "search={}",
                            "search_alg={type: random}", "train.batch_size=16",
                            "train.learning_rate=0.003", "resources.workers_per_trial=2",
                            name="two")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 data-parallel workers of 1 CPU" in done.stdout
    trial = next(p for p in experiment.iterdir() if (p / "result.json").is_file())
    last = read_results(trial)[-1]
    assert last["samples_seen"] == TRAIN_PAIRS
    config = read_experiment_record(str(experiment))
    task = task_for(config.data)
    bundle = task.load_data(config.data, str(tiny_marian), config.model.max_length)
    model = task.load_model(str(tiny_marian), [], 0)
    load_model(model, str(trial / last["checkpoint_dir_name"] / "model.safetensors"))
    scores = FineTuneLoop(model, bundle, TrainConfig(eval_batch_size=6), "eval_bleu",
                          "max", task=task).evaluate()
    assert scores["eval_bleu"] == pytest.approx(last["eval_bleu"], abs=1e-9)
    assert scores["eval_gen_len"] == pytest.approx(last["eval_gen_len"], abs=1e-9)
    assert scores["eval_loss"] == pytest.approx(last["eval_loss"], rel=1e-5)
