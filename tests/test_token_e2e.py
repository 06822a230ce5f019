"""Tagging end to end through the real CLI: experiments/ewt_pos_pbt.yaml with a tiny random
BERT on a real UD English EWT subset (train on test, score on dev), then analyze, compare,
report, confirm, replay and export; the exported folder loads with the transformers Auto class
and pipeline and reproduces the recorded token accuracy."""

import json
import re

import pandas as pd
import pytest
import torch
from support import REPO, card_code, run_card, run_cli

from raytune_ft.tasks import get_task

EWT = REPO.parent / "shared" / "data" / "ud_ewt"
TRAIN_SENTENCES, EVAL_SENTENCES = 64, 32
UPOS = {"ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART", "PRON",
        "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X"}


@pytest.fixture(scope="module")
def tagging_run(tmp_path_factory, tiny_bert):
    root = tmp_path_factory.mktemp("tagging")
    overrides = [f"model.name={tiny_bert}", "model.max_length=48",
                 f"data.train_file={EWT / 'en_ewt-ud-test.conllu'}",
                 f"data.eval_file={EWT / 'en_ewt-ud-dev.conllu'}",
                 f"data.max_train_samples={TRAIN_SENTENCES}",
                 f"data.max_eval_samples={EVAL_SENTENCES}",
                 "train.max_epochs=1", "train.eval_every_epochs=0.5", "train.max_micro_batch=8",
                 "scheduler.perturbation_interval=1", "run.checkpoints_to_keep=4",
                 f"run.storage_path={root / 'results'}"]
    done = run_cli("tune", "experiments/ewt_pos_pbt.yaml",
                   *(arg for o in overrides for arg in ("--set", o)))
    return done, root / "results" / "ewt_pos_pbt"


def test_tune_trains_taggers_and_reports_word_accuracy(tagging_run):
    done, experiment = tagging_run
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tag scheme   not BIO/BIOES: token accuracy only" in done.stdout
    assert f"budget       {TRAIN_SENTENCES} samples per trial (1 epoch" in done.stdout
    assert "best         eval_token_accuracy=" in done.stdout
    trials = [p for p in experiment.iterdir() if (p / "result.json").is_file()]
    assert len(trials) == 4
    for trial in trials:
        rows = [json.loads(line) for line in (trial / "result.json").read_text().splitlines()]
        for row in rows:  # samples are sentences: half an epoch is 32 of them
            assert row["samples_seen"] == 32 * row["training_iteration"]
            assert 0.0 < row["eval_token_accuracy"] < 1.0 and "eval_f1" not in row
            assert row["eval_loss"] > 0 and row["diverged"] is False
    record = json.loads((experiment / "raytune_ft.json").read_text())
    names = record["label_names"]  # the training subset's tags, sorted
    assert names == sorted(names) and {"NOUN", "VERB", "PUNCT"} <= set(names) <= UPOS


def test_analyze_compare_and_report(tagging_run):
    _, experiment = tagging_run
    assert run_cli("analyze", str(experiment)).returncode == 0
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    assert len(trials) == 4 and trials["best_metric"].between(0, 1).all()
    assert set(trials["samples_seen"]) == {TRAIN_SENTENCES}
    iterations = pd.read_parquet(experiment / "analysis" / "iterations.parquet")
    assert set(iterations["samples_seen"]) == {32, 64}
    assert iterations["eval_token_accuracy"].between(0, 1).all()
    done = run_cli("compare", str(experiment), "--format", "csv")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "eval_token_accuracy" in done.stdout.splitlines()[0]
    assert run_cli("report", str(experiment)).returncode == 0
    assert "eval_token_accuracy" in (experiment / "analysis" / "report.html").read_text()


@pytest.mark.slow  # two more Ray runs (~1-4 min on 2 cores)
def test_confirm_and_replay(tagging_run):
    _, experiment = tagging_run
    done = run_cli("confirm", str(experiment), "--top", "1", "--seeds", "2")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = pd.read_parquet(experiment / "analysis" / "confirm.parquet")
    assert len(rows) == 2 and rows["metric"].between(0, 1).all()
    done = run_cli("replay", str(experiment))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "eval_token_accuracy=" in done.stdout


def test_export_loads_with_the_auto_class_and_the_pipeline(tagging_run, tmp_path):
    from transformers import AutoModelForTokenClassification, pipeline

    from raytune_ft.config import TrainConfig
    from raytune_ft.experiment import read_experiment_record
    from raytune_ft.tasks import task_for
    from raytune_ft.training.loop import FineTuneLoop

    _, experiment = tagging_run
    out = tmp_path / "tagger"
    done = run_cli("export", str(experiment), "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "raytune_ft_export.json").read_text())
    model = AutoModelForTokenClassification.from_pretrained(out)
    names = read_experiment_record_names(experiment)
    assert [model.config.id2label[i] for i in range(len(names))] == names
    card = (out / "README.md").read_text()
    assert "pipeline_tag: token-classification" in card
    assert "- kind: `token_classification` (token-classification)" in card
    assert "en_ewt-ud-test.conllu" in card and "eval_token_accuracy" in card
    # the exported folder scores the eval sentences as the trial did
    config = read_experiment_record(str(experiment))
    task = task_for(config.data)
    bundle = task.load_data(config.data, str(out), config.model.max_length)
    loop = FineTuneLoop(model, bundle, TrainConfig(), config.metric, config.mode,
                        task=get_task(bundle.kind))
    scores = loop.evaluate()
    expected = record["metrics"]["eval_token_accuracy"]
    assert scores["eval_token_accuracy"] == pytest.approx(expected, abs=1e-12)
    tagger = pipeline("token-classification", model=str(out))
    tags = tagger("The cat sat on the mat.")
    assert tags and {t["entity"] for t in tags} <= set(model.config.id2label.values())
    # the card's usage: one tag per word, read at its first sub-token, as the loop scores it
    code = card_code(out).replace("Ray Tune tuned this tagger in Berlin .", "Unbelievably , "
                                  "tokenizers split words")
    namespace = run_card(out, code)
    words = namespace["words"]
    assert len(namespace["tags"]) == len(words) == 5
    encoded = namespace["encoded"]
    assert len(encoded["input_ids"][0]) > len(words) + 2  # some word is split into pieces
    with torch.no_grad():
        logits = model(**encoded).logits[0]
    firsts = [encoded.word_ids().index(w) for w in range(len(words))]
    assert namespace["tags"] == [model.config.id2label[int(logits[p].argmax())]
                                 for p in firsts]


def read_experiment_record_names(experiment) -> list[str]:
    return json.loads((experiment / "raytune_ft.json").read_text())["label_names"]


CONLL_TRAIN = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
to TO B-VP O
boycott VB I-VP O
British JJ B-NP B-MISC
lamb NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""
CONLL_DEV = """CRICKET NNP B-NP O
- : O O
LEICESTERSHIRE NNP B-NP B-ORG
TAKE NNP I-NP O
OVER IN B-PP O
AT NNP B-NP O
TOP NNP I-NP O
AFTER NNP I-NP O
INNINGS NNP I-NP O
VICTORY NN I-NP O
. . O O

LONDON NNP B-NP B-LOC
1996-08-30 CD I-NP O
"""


def test_the_gpu_ner_example_validates_on_a_small_conll_file(tmp_path, tiny_bert):
    """experiments/conll_ner_bert.yaml as written, on small CoNLL-2003 files; only what this
    CPU machine lacks is overridden (bert-base-cased is not cached here, no GPU)."""
    (tmp_path / "eng.train").write_text(CONLL_TRAIN)
    (tmp_path / "eng.testa").write_text(CONLL_DEV)
    overrides = [f"data.train_file={tmp_path / 'eng.train'}",
                 f"data.eval_file={tmp_path / 'eng.testa'}", f"model.name={tiny_bert}",
                 "resources.gpus_per_trial=0", "resources.cpus_per_trial=1",
                 f"run.storage_path={tmp_path / 'results'}"]
    args = [arg for o in overrides for arg in ("--set", o)]
    done = run_cli("validate", "experiments/conll_ner_bert.yaml", *args)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "BIO/BIOES: entity precision/recall/F1" in done.stdout
    assert "train 11 words in 2 sentences; eval 13 words in 2 sentences" in done.stdout
    assert "0 -> 'O', 1 -> 'B-PER'" in done.stdout  # the declared order
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())
    # a tag outside the declared set is one line naming the file and the line
    (tmp_path / "eng.testa").write_text(CONLL_DEV.replace("B-LOC", "B-GPE"))
    done = run_cli("validate", "experiments/conll_ner_bert.yaml", *args)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"data.eval_file: {tmp_path / 'eng.testa'} line 13: tag(s) 'B-GPE'" in done.stderr


@pytest.fixture(scope="module")
def length_search(tmp_path_factory, tiny_bert):
    """`raytune-ft tune` searching model.max_length (8 and 16 sub-words) for a tagger."""
    import yaml

    root = tmp_path_factory.mktemp("lengths")
    config = {"name": "ewt_lengths", "metric": "eval_token_accuracy", "mode": "max",
              "model": {"name": str(tiny_bert), "max_length": 16},
              "data": {"kind": "token_classification",
                       "train_file": str(EWT / "en_ewt-ud-test.conllu"),
                       "eval_file": str(EWT / "en_ewt-ud-dev.conllu"),
                       "max_train_samples": TRAIN_SENTENCES, "max_eval_samples": EVAL_SENTENCES,
                       "label_names": sorted(UPOS)},
              "train": {"max_epochs": 1, "eval_every_epochs": 1, "batch_size": 16,
                        "max_micro_batch": 16, "learning_rate": 1e-3},
              "search": {"model.max_length": {"grid": [8, 16]}},
              "scheduler": {"type": "fifo"}, "search_alg": {"type": "random", "seed": 0},
              "run": {"num_samples": 1, "storage_path": str(root / "results")}}
    path = root / "lengths.yaml"
    path.write_text(yaml.safe_dump(config))
    return run_cli("tune", str(path)), root / "results" / "ewt_lengths"


@pytest.mark.slow  # a Ray run of 2 trials and 2 exports: ~40 s on 2 quiet cores, 2 min loaded
def test_a_max_length_search_scores_every_trial_on_the_same_words(length_search, tmp_path):
    """Each length cuts its own training words (the header says so for both), yet every
    trial is scored on every word of the eval sentences: an exported trial, scored at its own
    length, reproduces its figure over all those words."""
    from transformers import AutoModelForTokenClassification

    from raytune_ft.config import TrainConfig
    from raytune_ft.experiment import read_experiment_record
    from raytune_ft.model_export import export_model
    from raytune_ft.tasks import _conll, task_for
    from raytune_ft.training.loop import FineTuneLoop

    done, experiment = length_search
    assert done.returncode == 0, done.stderr[-3000:]
    for length in (8, 16):
        assert f"max_length {length}: " in done.stdout and \
            f"train word(s) lie beyond model.max_length {length} sub-words" in done.stdout
    assert "(every eval word scored)" in done.stdout
    assert re.search(r"\nwindows +max_length 8: \d+ eval sentences longer than max_length 8 "
                     r"read in overlapping windows; max_length 16: \d+ eval sentences",
                     done.stdout)
    trials = pd.read_parquet(experiment / "analysis" / "trials.parquet")
    assert sorted(trials["hp_model.max_length"]) == [8, 16]
    config = read_experiment_record(str(experiment))
    dev = _conll.subset(_conll.read_tagged(config.data.eval_file, "data.eval_file", "conllu",
                                           "upos", None), EVAL_SENTENCES, 0)
    words = sum(map(len, dev.words))
    for _, trial in trials.iterrows():
        out, _ = export_model(experiment, tmp_path / f"len{trial['hp_model.max_length']}",
                              trial=trial["trial_id"])  # what `raytune-ft export` runs
        expected = json.loads((out / "raytune_ft_export.json").read_text())["metrics"]
        bundle = task_for(config.data).load_data(config.data, str(out),
                                                 int(trial["hp_model.max_length"]))
        assert len(bundle.eval.word_tags) == words and len(bundle.eval.scored) == words
        loop = FineTuneLoop(AutoModelForTokenClassification.from_pretrained(out), bundle,
                            TrainConfig(), config.metric, config.mode, task=get_task(bundle.kind))
        scores = loop.evaluate()
        assert scores["eval_token_accuracy"] == pytest.approx(
            expected["eval_token_accuracy"], abs=1e-12)
