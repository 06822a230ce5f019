"""Sequence to sequence with exact numbers: the readers on the real Multi30K files (research
and education use only) and on tables, encoding without padding, the teacher-forced loss over
target tokens (accumulation exact), generation through the loop, and scores equal to
sacreBLEU's and rouge-score's own command lines."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from support import MULTI30K

from raytune_ft.config import TrainConfig
from raytune_ft.errors import DataError
from raytune_ft.schema import data_settings
from raytune_ft.tasks import get_task
from raytune_ft.tasks._base import IGNORE
from raytune_ft.tasks._parallel import read_pairs, subset
from raytune_ft.tasks._scores import corpus_scores
from raytune_ft.tasks.seq2seq import Seq2SeqData, collate, generated_lengths
from raytune_ft.training.loop import FineTuneLoop

TASK = get_task("seq2seq")


def multi30k(**fields) -> Seq2SeqData:
    values = {"kind": "seq2seq", "train_file": str(MULTI30K / "train"),
              "eval_file": str(MULTI30K / "test_2016_flickr"), "source_lang": "de",
              "target_lang": "en", **fields}
    return data_settings(**values)


# ---------------------------------------------------------------------------- readers


def test_multi30k_by_suffix_drops_and_counts_the_two_markup_lines():
    data = multi30k()
    pairs = read_pairs(data.train_file, data, "data.train_file")
    assert len(pairs) == 29_000 - 2
    assert pairs.dropped == {"source holds only markup": 2}
    assert pairs.dropped_text() == ("2 pair(s) dropped (source holds only markup: 2; "
                                    "first: train.de line 16510)")
    german = (MULTI30K / "train.de").read_text().splitlines()
    english = (MULTI30K / "train.en").read_text().splitlines()
    kept = [i for i, line in enumerate(german) if line != "@@"]
    assert [i + 1 for i, line in enumerate(german) if line == "@@"] == [16510, 16664]
    assert pairs.sources == [german[i] for i in kept]
    assert pairs.targets == [english[i] for i in kept]  # still aligned after the drop
    # train.de names the same pair of files
    same = read_pairs(str(MULTI30K / "train.de"), data, "data.train_file")
    assert same.sources == pairs.sources


def test_markup_refused_with_file_and_line_when_not_dropped():
    data = multi30k(drop_bad_pairs=False)
    with pytest.raises(DataError, match=r"data.train_file: .*train.de line 16510: the source "
                                        r"is only markup \('@@'\)"):
        read_pairs(data.train_file, data, "data.train_file")


def test_pair_of_files_misaligned_empty_and_mostly_bad(tmp_path):
    source, target = tmp_path / "a.src", tmp_path / "a.tgt"
    source.write_text("eins\nzwei\ndrei\n")
    target.write_text("one\ntwo\n")
    spec = {"source": str(source), "target": str(target)}
    data = data_settings(kind="seq2seq", train_file=spec, eval_file=spec)
    with pytest.raises(DataError, match=r"a.src has 3 lines but .*a.tgt has 2; line i"):
        read_pairs(data.train_file, data, "data.train_file")
    source.write_text("".join(f"satz {i}\n" for i in range(40)))
    target.write_text("".join(f"sentence {i}\n" if i != 7 else " \n" for i in range(40)))
    pairs = read_pairs(data.train_file, data, "data.train_file")
    assert len(pairs) == 39 and pairs.dropped == {"target is empty": 1}
    assert "first: a.tgt line 8" in pairs.dropped_text()
    strict = data.model_copy(update={"drop_bad_pairs": False})
    with pytest.raises(DataError, match=r"a.tgt line 8: the target is empty"):
        read_pairs(strict.train_file, strict, "data.train_file")
    target.write_text("".join(f"sentence {i}\n" if i % 4 else "...\n" for i in range(40)))
    with pytest.raises(DataError, match=r"10 pair\(s\) dropped .* of 40, more than 5%"):
        read_pairs(data.train_file, data, "data.train_file")


def test_tables_with_columns_and_the_translation_layout(tmp_path):
    rows = [{"de": "Ein Hund.", "en": "A dog."}, {"de": "Zwei Katzen.", "en": "Two cats."}]
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"src": r["de"], "tgt": r["en"]}) + "\n" for r in rows))
    data = data_settings(kind="seq2seq", train_file=str(jsonl), eval_file=str(jsonl),
                      source_column="src", target_column="tgt")
    pairs = read_pairs(data.train_file, data, "data.train_file")
    assert pairs.sources == ["Ein Hund.", "Zwei Katzen."] and pairs.targets[1] == "Two cats."
    wrong = data.model_copy(update={"target_column": "english"})
    with pytest.raises(DataError, match=r"data.target_column: 'english' not found .*columns "
                                        r"present: src, tgt"):
        read_pairs(wrong.train_file, wrong, "data.train_file")
    parquet = tmp_path / "wmt.parquet"
    pd.DataFrame({"translation": rows}).to_parquet(parquet)
    hub = data_settings(kind="seq2seq", train_file=str(parquet), eval_file=str(parquet),
                     source_lang="en", target_lang="de")
    pairs = read_pairs(hub.train_file, hub, "data.train_file")
    assert pairs.sources == ["A dog.", "Two cats."] and pairs.targets == ["Ein Hund.",
                                                                           "Zwei Katzen."]
    french = hub.model_copy(update={"target_lang": "fr"})
    with pytest.raises(DataError, match=r"row 1: 'translation' has no 'fr' text \(languages "
                                        r"there: de, en\)"):
        read_pairs(french.train_file, french, "data.train_file")


def test_eval_subset_first_takes_the_first_sentences():
    data = multi30k()
    pairs = read_pairs(data.eval_file, data, "data.eval_file")
    first = subset(pairs, 500, seed=0, first=True)
    german = (MULTI30K / "test_2016_flickr.de").read_text().splitlines()
    assert first.sources == german[:500]
    assert subset(pairs, 500, seed=0).sources != german[:500]  # the seeded random subset


def test_config_refuses_what_seq2seq_cannot_read():
    from raytune_ft.errors import ConfigError
    from raytune_ft.schema import validate_config

    def validate(data: dict):
        return validate_config({"name": "x", "model": {"name": "m"}, "data": data})

    pairs = multi30k().model_dump()
    with pytest.raises(ConfigError, match=r"data.text_columns: unknown key for data.kind "
                                          r"seq2seq \(read by data.kind sequence_classif"):
        validate({**pairs, "text_columns": ["a"]})
    with pytest.raises(ConfigError, match="data.label_column: unknown key for data.kind "
                                          "seq2seq"):
        validate({**pairs, "label_column": "b"})
    with pytest.raises(ConfigError, match="give both or neither"):
        validate({**pairs, "target_lang": None})
    with pytest.raises(ConfigError, match="data.train_file"):  # {source, target}: seq2seq's
        validate({"train_file": {"source": "a", "target": "b"}, "eval_file": "x.csv",
                  "text_columns": ["t"], "label_column": "l"})
    with pytest.raises(ConfigError, match=r"data.source_lang: unknown key for data.kind "
                                          r"sequence_classification \(read by data.kind "
                                          r"seq2seq\)"):
        validate({"train_file": "x.csv", "eval_file": "x.csv", "text_columns": ["t"],
                  "label_column": "l", "source_lang": "de"})


# ---------------------------------------------------------------------------- encoding


@pytest.fixture(scope="module")
def bundle(tiny_marian):
    data = multi30k(max_train_samples=64, max_eval_samples=16, eval_subset="first",
                    max_target_length=12, generation={"max_new_tokens": 16})
    return TASK.load_data(data, str(tiny_marian), 16)


def test_encoded_once_without_padding_and_cut_counted(bundle, tiny_marian):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_marian)
    train, dev = bundle.train, bundle.eval
    assert len(train) == 64 and len(dev) == 16 and bundle.label_names == []
    german = (MULTI30K / "test_2016_flickr.de").read_text().splitlines()[:16]
    english = (MULTI30K / "test_2016_flickr.en").read_text().splitlines()[:16]
    assert dev.references == english
    for i in range(16):
        source = tokenizer(german[i], truncation=True, max_length=16)["input_ids"]
        target = tokenizer(text_target=english[i], truncation=True, max_length=12)["input_ids"]
        assert dev.ids[dev.offsets[i]:dev.offsets[i + 1]].tolist() == source
        assert dev.target_ids[dev.target_offsets[i]:dev.target_offsets[i + 1]].tolist() == target
    assert dev.sources_cut == sum(len(tokenizer(s)["input_ids"]) > 16 for s in german) > 0
    assert train.targets_cut > 0 and int(train.target_lengths.max()) == 12
    assert bundle.metrics == ["eval_loss", "eval_bleu", "eval_chrf", "eval_gen_len"]
    warnings = TASK.warnings(bundle, multi30k())
    assert any("data.max_target_length 12 tokens: cut" in w for w in warnings)


def test_collate_shifts_the_labels_behind_the_start_token(bundle):
    indices = np.array([3, 0, 5])
    batch = collate(bundle.train, indices, bundle.pad_token_id)
    lengths = bundle.train.target_lengths[indices]
    assert batch["labels"].shape == (3, lengths.max())  # the longest target, not max length
    for row, i in enumerate(indices):
        a, b = bundle.train.target_offsets[i], bundle.train.target_offsets[i + 1]
        target = bundle.train.target_ids[a:b].tolist()
        assert batch["labels"][row, :b - a].tolist() == target
        assert (batch["labels"][row, b - a:] == IGNORE).all()
        assert batch["decoder_input_ids"][row, 0] == bundle.train.start_id
        assert batch["decoder_input_ids"][row, 1:b - a].tolist() == target[:-1]
    assert TASK.loss_units(batch) == int(lengths.sum())


def test_generated_lengths_stop_at_the_first_eos():
    sequences = np.array([[0, 5, 6, 1, 0, 0], [0, 7, 1, 8, 1, 0], [0, 4, 4, 4, 4, 4]])
    assert generated_lengths(sequences, 0, 1).tolist() == [3, 2, 5]


def no_dropout(path) -> torch.nn.Module:
    from transformers import AutoModelForSeq2SeqLM

    torch.manual_seed(0)
    return AutoModelForSeq2SeqLM.from_pretrained(path, dropout=0.0)


def test_loss_is_summed_over_target_tokens_and_accumulation_is_exact(bundle, tiny_marian):
    """One step over 8 pairs equals the same step in micro-batches of 3 (dropout off): the
    loss unit is a target token however the tokens fall into micro-batches."""

    def trained(micro: int) -> dict:
        model = no_dropout(tiny_marian)
        hp = TrainConfig(batch_size=8, max_micro_batch=micro, max_epochs=1,
                         learning_rate=1e-3, label_smoothing=0.1)
        loop = FineTuneLoop(model, bundle, hp, "eval_bleu", "max", task=TASK)
        loop._step(np.arange(8))
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    whole, parts = trained(8), trained(3)
    for key in whole:
        torch.testing.assert_close(whole[key], parts[key], rtol=1e-4, atol=1e-6)
    batch = collate(bundle.train, np.arange(4), bundle.pad_token_id)
    model = no_dropout(tiny_marian).eval()
    logits = TASK.forward(model, batch)
    labels = batch["labels"]
    mask = labels != IGNORE
    by_hand = -torch.log_softmax(logits.float(), -1).gather(
        -1, labels.clamp(min=0)[..., None])[..., 0][mask].sum()
    torch.testing.assert_close(TASK.loss(logits, batch), by_hand)


def test_evaluation_generates_and_scores_the_decoded_text(bundle, tiny_marian):
    from raytune_ft.training.model import load_pretrained

    model = load_pretrained("AutoModelForSeq2SeqLM", str(tiny_marian), 0)
    loop = FineTuneLoop(model, bundle, TrainConfig(eval_batch_size=5), "eval_bleu", "max",
                        task=TASK)
    scores = loop.evaluate()
    assert set(scores) == {"eval_loss", "eval_bleu", "eval_chrf", "eval_gen_len"}
    # the same figures from generating by hand, one sentence at a time
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_marian)
    hypotheses, lengths = [], []
    german = (MULTI30K / "test_2016_flickr.de").read_text().splitlines()[:16]
    model.eval()
    with torch.no_grad():
        for sentence in german:
            encoded = tokenizer(sentence, truncation=True, max_length=16, return_tensors="pt")
            out = model.generate(**encoded, num_beams=1, do_sample=False, max_new_tokens=16)
            hypotheses.append(tokenizer.decode(out[0], skip_special_tokens=True).strip())
            lengths.append(generated_lengths(out.numpy(), 0, 1)[0])
    expected = corpus_scores(hypotheses, bundle.eval.references, ["bleu", "chrf"])
    assert scores["eval_bleu"] == pytest.approx(expected["eval_bleu"], abs=1e-9)
    assert scores["eval_chrf"] == pytest.approx(expected["eval_chrf"], abs=1e-9)
    assert scores["eval_gen_len"] == pytest.approx(np.mean(lengths))
    assert loop.eval_seconds[1] > 0  # the decoding was timed


# ---------------------------------------------------------------------------- scores


HYPOTHESES = ["A man in an orange hat looking at something.",
              "A Boston terrier runs on green grass in front of a white fence.",
              "A girl in karate uniform breaking a board with a kick.",
              "five people in winter jackets and helmets stand in the snow",
              "People are fixing the roof of a house.", ""]


def test_scores_equal_the_libraries_command_lines(tmp_path):
    """BLEU and chrF as `sacrebleu REF -i HYP -m bleu chrf` prints them (cased, and with
    -lc --chrf-lowercase), ROUGE as rouge-score's own scorer script writes them."""
    references = (MULTI30K / "test_2016_flickr.en").read_text().splitlines()[:len(HYPOTHESES)]
    ref, hyp = tmp_path / "ref.en", tmp_path / "hyp.en"
    ref.write_text("\n".join(references) + "\n")
    hyp.write_text("\n".join(HYPOTHESES) + "\n")
    sacrebleu = [sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-m", "bleu",
                 "chrf", "-b", "-w", "10"]
    for lowercase, flags in ((False, []), (True, ["-lc", "--chrf-lowercase"])):
        printed = subprocess.run(sacrebleu + flags, capture_output=True, text=True, check=True)
        bleu, chrf = json.loads(printed.stdout)  # -b: the scores alone, to -w 10 decimals
        ours = corpus_scores(HYPOTHESES, references, ["bleu", "chrf"], lowercase)
        assert ours["eval_bleu"] == pytest.approx(bleu, abs=1e-9)
        assert ours["eval_chrf"] == pytest.approx(chrf, abs=1e-9)
    cased = corpus_scores(HYPOTHESES, references, ["bleu"])["eval_bleu"]
    assert corpus_scores(HYPOTHESES, references, ["bleu"], True)["eval_bleu"] > cased
    # rouge-score's script, one row per example (--noaggregate), mean F-measure x 100
    targets, predictions, out = tmp_path / "t.txt", tmp_path / "p.txt", tmp_path / "r.csv"
    targets.write_text("\n".join(references) + "\n")
    predictions.write_text("\n".join(HYPOTHESES) + "\n")
    subprocess.run([sys.executable, "-m", "rouge_score.rouge",
                    f"--target_filepattern={targets}", f"--prediction_filepattern={predictions}",
                    f"--output_filename={out}", "--use_stemmer=true", "--noaggregate",
                    "--rouge_types=rouge1,rouge2,rougeL"], capture_output=True, check=True)
    rows = pd.read_csv(out)
    ours = corpus_scores(HYPOTHESES, references, ["rouge"])
    for name in ("rouge1", "rouge2", "rougeL"):
        column = rows[f"{name}-F"]  # written to 6 decimals
        assert len(column) == len(HYPOTHESES)
        assert ours[f"eval_{name}"] == pytest.approx(100 * column.mean(), abs=1e-4)


def test_copy_baseline_on_the_first_500_test_sentences():
    """The source sentence as its own translation: the floor the quick experiment's figure
    is quoted beside (docs/seq2seq.md)."""
    sources = (MULTI30K / "test_2016_flickr.de").read_text().splitlines()[:500]
    references = (MULTI30K / "test_2016_flickr.en").read_text().splitlines()[:500]
    lowercased = corpus_scores(sources, references, ["bleu", "chrf"], lowercase=True)
    cased = corpus_scores(sources, references, ["bleu", "chrf"])
    assert round(lowercased["eval_bleu"], 2) == 0.82 and round(cased["eval_bleu"], 2) == 0.57
    assert round(cased["eval_chrf"], 1) == 17.7


def test_the_tokenizer_is_trained_deterministically(tmp_path):
    from raytune_ft.multi30k import corpus_lines, train_tokenizer

    lines = corpus_lines(MULTI30K, limit=2000)
    first, second = (train_tokenizer(lines, 800) for _ in range(2))
    assert first.get_vocab() == second.get_vocab() and len(first) == 800
    ids = first("Zwei Männer stehen am Herd.")["input_ids"]
    assert ids[-1] == first.eos_token_id == 1 and first.pad_token_id == 0
    assert first.decode(ids, skip_special_tokens=True) == "Zwei Männer stehen am Herd."


def test_decoder_name_only_for_seq2seq_and_a_fixed_encoder():
    from raytune_ft.errors import ConfigError
    from raytune_ft.schema import validate_config

    base = {"name": "x", "metric": "eval_bleu",
            "model": {"name": "enc", "decoder_name": "dec"},
            "data": {"kind": "seq2seq", "train_file": str(MULTI30K / "train"),
                     "eval_file": str(MULTI30K / "val"), "source_lang": "de",
                     "target_lang": "en"}}
    assert validate_config(base).model.decoder_name == "dec"
    with pytest.raises(ConfigError, match="model.decoder_name: set with search.model.name"):
        validate_config({**base, "search": {"model.name": {"choice": ["enc", "b"]}}})
    with pytest.raises(ConfigError, match="model.decoder_name: read only by data.kind "
                                          "seq2seq"):
        validate_config({**base, "metric": "eval_accuracy",
                         "data": {"train_file": "t.csv", "eval_file": "t.csv",
                                  "text_columns": ["a"], "label_column": "b"}})


def test_decoder_name_is_read_by_the_tasks_that_declare_an_encoder_decoder(monkeypatch):
    """A capability the task declares (`Task.encoder_decoder`), not its Auto class: the
    message lists the kinds that have it, from the registry."""
    from raytune_ft.errors import ConfigError
    from raytune_ft.schema import validate_config
    from raytune_ft.tasks import TASKS

    table = {"name": "x", "model": {"name": "enc", "decoder_name": "dec"},
             "data": {"train_file": "t.csv", "eval_file": "t.csv", "text_columns": ["a"],
                      "label_column": "b"}}
    monkeypatch.setattr(TASKS["token_classification"], "encoder_decoder", True)
    with pytest.raises(ConfigError, match=r"model.decoder_name: read only by data.kind "
                       r"token_classification, seq2seq \(an encoder-decoder; this data is "
                       r"read by sequence_classification\)"):
        validate_config(table)
    monkeypatch.setattr(TASKS["sequence_classification"], "encoder_decoder", True)
    assert validate_config(table).model.decoder_name == "dec"


def test_the_gpu_example_validates_on_a_small_table(tmp_path, tiny_marian):
    """experiments/wmt_t5.yaml as written, on a small table in the Hugging Face translation
    layout; only what this CPU machine lacks is overridden (t5-small is not cached here, no
    GPU, no bucket)."""
    from support import run_cli

    german = (MULTI30K / "val.de").read_text().splitlines()[:40]
    english = (MULTI30K / "val.en").read_text().splitlines()[:40]
    rows = [{"de": d, "en": e} for d, e in zip(german, english)]
    for name in ("train", "validation"):
        pd.DataFrame({"translation": rows}).to_parquet(tmp_path / f"{name}.parquet")
    overrides = [f"data.train_file={tmp_path / 'train.parquet'}",
                 f"data.eval_file={tmp_path / 'validation.parquet'}",
                 f"model.name={tiny_marian}", "resources.gpus_per_trial=0",
                 "resources.cpus_per_trial=1", f"run.storage_path={tmp_path / 'results'}"]
    done = run_cli("validate", "experiments/wmt_t5.yaml",
                   *(arg for o in overrides for arg in ("--set", o)))
    assert done.returncode == 0, done.stderr[-2000:]
    assert ": 40 train, 40 eval\n" in done.stdout
    assert "generation   greedy, at most 128 new tokens" in done.stdout


def test_summarisation_reports_rouge_only(tmp_path, tiny_marian):
    from raytune_ft.errors import ConfigError

    english = (MULTI30K / "val.en").read_text().splitlines()[:12]
    table = tmp_path / "summaries.jsonl"
    table.write_text("".join(json.dumps({"document": f"{e} {e}", "summary": e}) + "\n"
                             for e in english))
    data = data_settings(kind="seq2seq", train_file=str(table), eval_file=str(table),
                      source_column="document", target_column="summary", metrics=["rouge"],
                      generation={"max_new_tokens": 8})
    bundle = TASK.load_data(data, str(tiny_marian), 64)
    assert bundle.metrics == ["eval_loss", "eval_rouge1", "eval_rouge2", "eval_rougeL",
                              "eval_gen_len"]
    assert ("scores", "ROUGE-1/2/L F (rouge-score, Porter stemmer, its own lowercasing "
                      "tokenizer); 0-100") in TASK.describe(bundle)
    with pytest.raises(ConfigError, match=r"metric: 'eval_bleu' is not reported with "
                                          r"data.metrics \['rouge'\]"):
        TASK.check_metric("eval_bleu", bundle, data)
    from raytune_ft.training.model import load_pretrained

    model = load_pretrained("AutoModelForSeq2SeqLM", str(tiny_marian), 0)
    scores = FineTuneLoop(model, bundle, TrainConfig(), "eval_rougeL", "max", task=TASK).evaluate()
    assert set(scores) == set(bundle.metrics)
    assert 0.0 <= scores["eval_rougeL"] <= 100.0 and scores["eval_gen_len"] <= 8
