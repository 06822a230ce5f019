"""Token classification: a tag for every word (part of speech, named entities).

The driver reads the tagged sentences (`_conll`: CoNLL-U, CoNLL-2003 columns, JSONL/Parquet
lists) and encodes them once with the model's fast tokenizer (`is_split_into_words`, its
`word_ids()`) into flat numpy arrays: sub-word ids, the tag of each position (-100 where the
loss ignores it: special tokens, and every sub-token of a word but its first unless
`data.label_all_subtokens`), which positions start a scored word, and the gold tag of every
word of the file. A sample is a sentence; its length for batching is its sub-word count.

Every trial scores the same words, whatever its `model.max_length` or tokenizer: every gold
word of the eval file. An eval sentence longer than `model.max_length` sub-words is read in
windows of max_length that overlap by half a window (one row each in its batch; the model
reads a batch's rows at most its sentence count at a time), and each word is predicted in the
window where its first sub-token has the most context. A training
sentence is cut at max_length instead (a sample stays one sequence of at most max_length on
the device, and the budget counts sentences, the same for every length a search tries); the
run header counts the training words cut, for every tokenization. A word the tokenizer maps
to no sub-token has no prediction and counts as wrong.

The loss is cross-entropy summed over the labelled positions, and `loss_units` is their count,
so a step's gradient is the mean over the whole batch's labelled tokens however they fall into
micro-batches. Metrics are over words (the prediction at a word's first sub-token):
`eval_token_accuracy`, and for BIO/BIOES tag sets entity-level micro precision, recall and F1
computed as seqeval's default mode computes them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import model_validator

import raytune_ft.tasks._conll as _conll
from raytune_ft.config import DataSettings
from raytune_ft.errors import ConfigError, ModelError
from raytune_ft.tasks._base import DataBundle, Metric, PositionLoss, Task, label_list
from raytune_ft.tasks._conll import check_tag_column, file_format
from raytune_ft.tasks._tagged import UNSCORED, TaggedSplit, collate, encode, passes

if TYPE_CHECKING:
    import torch


log = logging.getLogger(__name__)


class TokenData(DataSettings):
    """Tagged sentences: CoNLL-U, CoNLL-2003 columns, or JSONL/Parquet lists of words and
    tags (train_file and eval_file are required)."""

    kind: Literal["token_classification"] = "token_classification"
    format: Literal["conllu", "conll", "table"] | None = None  # None: by suffix (.conllu,
    #   .jsonl/.json/.parquet: table; others: conll = CoNLL-2003 columns, tag last)
    tag_column: str | None = None  # conllu: upos (default), xpos, misc:KEY; table: tag lists
    tokens_column: str | None = None  # table: the column of word lists
    label_names: list[str] | None = None  # the tag set in id order; None: train's, sorted
    label_all_subtokens: bool = False  # False: a word's first sub-token carries its tag

    @model_validator(mode="after")
    def _files(self) -> TokenData:
        if self.train_file is None:
            raise ValueError("data.train_file is required with data.kind token_classification "
                             "(CoNLL-U, CoNLL-2003 columns, or JSONL/Parquet word lists)")
        fmt = file_format(self.train_file, self.format)
        if file_format(self.eval_file, self.format) != fmt:
            raise ValueError(f"data.eval_file: {self.eval_file} is not a {fmt} file like "
                             f"data.train_file; set data.format")
        check_tag_column(fmt, self.tag_column, self.tokens_column)
        names = self.label_names or []
        if len(set(names)) != len(names):
            raise ValueError(f"data.label_names: {names} names a tag twice")
        return self

ENTITY_TAG = re.compile(r"[BIES]-.+")  # a BIO/BIOES tag: a prefix, a dash, the entity type
ENTITY_METRICS = ["eval_precision", "eval_recall", "eval_f1"]


def is_entity_scheme(label_names: list[str]) -> bool:
    """BIO/BIOES: every tag is O or a prefixed entity tag, and at least one is."""
    return any(ENTITY_TAG.fullmatch(t) for t in label_names) and all(
        t == "O" or ENTITY_TAG.fullmatch(t) for t in label_names)


def word_tokenizer(model_path: str):
    """The model's fast tokenizer, reading pre-split words as running text: a byte-level BPE
    (RoBERTa, GPT-2) marks a word's start with a space, which split words lack unless
    `add_prefix_space` is on. A slow tokenizer has no `word_ids()`: refused."""
    from raytune_ft.training.model import load_tokenizer

    tokenizer = load_tokenizer(model_path)
    if not tokenizer.is_fast:
        raise ModelError(f"model.name: the tokenizer of {model_path} is a slow (Python) one; "
                         "token classification needs a fast tokenizer (tokenizer.json) to map "
                         "sub-words to words")
    if "ByteLevel" in tokenizer.backend_tokenizer.to_str() and not getattr(
            tokenizer, "add_prefix_space", False):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path, add_prefix_space=True)
    return tokenizer

# ---------------------------------------------------------------- metrics


def entities(tags: list[str]) -> list[tuple[str, int, int]]:
    """(type, first, last) chunks of a tag sequence, as seqeval's default mode reads them
    (`seqeval.metrics.sequence_labeling.get_entities`, prefix tags): an I- without a B- starts
    an entity, a change of type ends one, and so does the end of the sequence."""
    chunks, prev_tag, prev_type, begin = [], "O", "", 0
    for i, chunk in enumerate([*tags, "O"]):
        tag, type_ = chunk[0], chunk[1:].split("-", maxsplit=1)[-1] or "_"
        if _ends(prev_tag, tag, prev_type, type_):
            chunks.append((prev_type, begin, i - 1))
        if _begins(prev_tag, tag, prev_type, type_):
            begin = i
        prev_tag, prev_type = tag, type_
    return chunks


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (prev_tag in "ES" or (prev_tag in "BI" and tag in "BSO")
            or (prev_tag not in "O." and prev_type != type_))


def _begins(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (tag in "BS" or (prev_tag in "ESO" and tag in "EI")
            or (tag not in "O." and prev_type != type_))


def entity_scores(gold: list[list[str]], predicted: list[list[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over entities of all sentences: seqeval's default mode
    (sentences joined with an O between them; 0.0 where a denominator is 0)."""
    def joined(sentences: list[list[str]]) -> set[tuple[str, int, int]]:
        return set(entities([tag for tags in sentences for tag in (*tags, "O")]))

    true, pred = joined(gold), joined(predicted)
    hits = len(true & pred)
    precision = hits / len(pred) if pred else 0.0
    recall = hits / len(true) if true else 0.0
    denominator = precision + recall
    f1 = 2 * precision * recall / denominator if denominator else 0.0
    return {"eval_precision": precision, "eval_recall": recall, "eval_f1": f1}


# ---------------------------------------------------------------- the task


class TokenClassification(PositionLoss, Task):
    name = "token_classification"
    primary_metric = "eval_token_accuracy"
    settings = TokenData
    example = {"kind": "token_classification", "train_file": "train.conllu",
               "eval_file": "dev.conllu"}
    metrics = (Metric("eval_token_accuracy", "max", 0.0), Metric("eval_f1", "max", 0.0),
               Metric("eval_precision", "max", 0.0), Metric("eval_recall", "max", 0.0))
    pipeline_tag = "token-classification"
    auto_class = "AutoModelForTokenClassification"

    def load_data(self, data: TokenData, model_path: str, max_length: int) -> DataBundle:
        from raytune_ft.training.model import check_tokenizer

        tokenizer = word_tokenizer(model_path)
        fmt = _conll.file_format(data.train_file, data.format)
        splits = [_conll.read_tagged(path, where, fmt, data.tag_column, data.tokens_column)
                  for path, where in ((data.train_file, "data.train_file"),
                                      (data.eval_file, "data.eval_file"))]
        train = _conll.subset(splits[0], data.max_train_samples, data.subset_seed)
        dev = _conll.subset(splits[1], data.max_eval_samples, data.subset_seed)
        label_names = _conll.label_set(train, dev, data.label_names)
        log.info("encoding %d train and %d eval sentences", len(train), len(dev))
        # training cuts a sentence at max_length (a sample stays one sequence of at most
        # max_length on the device); evaluation reads all of it, in overlapping windows
        encoded = [encode(split, tokenizer, max_length, label_names, data.label_all_subtokens,
                          windowed) for split, windowed in ((train, False), (dev, True))]
        check_tokenizer(tokenizer, model_path, encoded[0])
        metrics = ["eval_token_accuracy", "eval_loss"]
        if is_entity_scheme(label_names):
            metrics += ENTITY_METRICS
        return DataBundle(*encoded, label_names, int(tokenizer.pad_token_id or 0),
                          Path(data.train_file).stem, metrics, self.name)

    def describe(self, bundle: DataBundle, shown: int = 20) -> list[tuple[str, str]]:
        text = label_list(bundle.label_names, shown)
        scheme = ("BIO/BIOES: entity precision/recall/F1 as seqeval's default mode"
                  if "eval_f1" in bundle.metrics else "not BIO/BIOES: token accuracy only")
        words = [f"{name} {int(split.word_offsets[-1])} words in {len(split)} sentences"
                 for name, split in (("train", bundle.train), ("eval", bundle.eval))]
        lines = [("tags", text), ("tag scheme", scheme),
                 ("words", "; ".join(words) + " (every eval word scored)")]
        windowed = bundle.eval.windowed
        if windowed:  # its own line: a max_length search gives it per tokenization
            lines.append(("windows", f"{windowed} eval sentences longer than max_length "
                                     f"{bundle.eval.max_length} read in overlapping windows"))
        return lines

    def warnings(self, bundle: DataBundle, data: TokenData) -> list[str]:
        """Words cut at max_length or lost by the tokenizer, and tags no training word has."""
        train, dev = bundle.train, bundle.eval
        out = []
        if train.words_cut:
            out.append(f"{train.words_cut} train word(s) lie beyond model.max_length "
                       f"{train.max_length} sub-words: cut, not trained (evaluation scores "
                       "every word, reading long sentences in overlapping windows)")
        if train.words_lost:
            out.append(f"{train.words_lost} train word(s) map to no sub-token (e.g. "
                       f"{', '.join(train.examples)}): not trained")
        if dev.words_lost:
            out.append(f"{dev.words_lost} eval word(s) map to no sub-token (e.g. "
                       f"{', '.join(dev.examples)}): no prediction, scored as wrong")
        counts = np.bincount(train.word_tags[train.scored], minlength=len(bundle.label_names))
        empty = [repr(name) for i, name in enumerate(bundle.label_names) if not counts[i]]
        if empty:
            out.append(f"no training word has tag(s) {', '.join(empty)}")
        return out

    def check_metric(self, metric: str, bundle: DataBundle, data: TokenData) -> None:
        if metric.startswith("eval_") and metric not in bundle.metrics:
            why = (" (entity scores need BIO/BIOES tags such as B-PER, I-PER, O)"
                   if metric in ENTITY_METRICS else "")
            raise ConfigError(f"metric: {metric!r} is not reported for tagging "
                              f"{bundle.task}{why}; reported: {', '.join(bundle.metrics)}")

    def load_model(self, path: str, label_names: list[str], seed: int) -> torch.nn.Module:
        """The body with a tagging head for these tags (`training.model.load_pretrained`:
        an NER folder's own head is kept, rows by tag name, where its tags are these)."""
        from raytune_ft.training.model import load_pretrained

        return load_pretrained(self.auto_class, path, seed, label_names)

    def collate(self, data: DataBundle, split: TaggedSplit, indices: np.ndarray) -> dict:
        return collate(split, indices, data.pad_token_id)

    def forward(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """Logits per row, at most the batch's sentence count of rows per pass (`passes`:
        an eval batch's extra windows do not raise the memory one pass takes)."""
        import torch

        ids, mask = batch["input_ids"], batch["attention_mask"]
        logits = [model(input_ids=ids[rows], attention_mask=mask[rows]).logits
                  for rows in passes(batch)]
        return logits[0] if len(logits) == 1 else torch.cat(logits)

    def predict(self, outputs: torch.Tensor, batch: dict) -> list[np.ndarray]:
        """The predicted tag of each word a row scores (at its first sub-token), per row
        (a window; the rows of a batch are its sentences' windows, in order)."""
        predicted = outputs.float().argmax(-1).cpu().numpy()
        starts = batch["word_starts"].cpu().numpy()
        return [row[mask] for row, mask in zip(predicted, starts)]

    def compute_metrics(self, data: DataBundle,
                        predictions: list[tuple[np.ndarray, list[np.ndarray]]]
                        ) -> dict[str, float]:
        """Every gold word of the eval split is scored: a word without a prediction (one the
        tokenizer maps to nothing) counts as wrong, and as O for the entity scores."""
        split: TaggedSplit = data.eval
        predicted = np.full(len(split.word_tags), UNSCORED, dtype=np.int64)
        bounds = split.score_offsets
        for indices, rows in predictions:
            windows = np.concatenate([np.arange(split.windows[i], split.windows[i + 1])
                                      for i in indices])
            for window, row in zip(windows, rows, strict=True):
                predicted[split.scored[bounds[window]:bounds[window + 1]]] = row
        gold = split.word_tags
        scores = {"eval_token_accuracy": float(np.mean(predicted == gold)) if len(gold) else 0.0}
        if "eval_f1" in data.metrics:
            names = np.asarray([*data.label_names, "O"], dtype=object)  # UNSCORED (-1): O
            bounds = split.word_offsets
            sentences = [(names[gold[a:b]].tolist(), names[predicted[a:b]].tolist())
                         for a, b in zip(bounds[:-1], bounds[1:])]
            scores.update(entity_scores([g for g, _ in sentences], [p for _, p in sentences]))
        return scores

    def save_processor(self, model_path: str, out: str, max_length: int) -> None:
        tokenizer = word_tokenizer(model_path)  # as trained: add_prefix_space for BPE
        tokenizer.model_max_length = max_length  # truncation=True cuts as in training
        tokenizer.save_pretrained(out)

    def usage(self) -> list[str]:
        """A tag per word, read at the word's first sub-token: the only one trained (the
        pipeline without aggregation tags every sub-token; with `aggregation_strategy=
        "first"` it merges neighbouring words that share a tag outside BIO)."""
        return [f"from transformers import {self.auto_class}, AutoTokenizer", "",
                f'model = {self.auto_class}.from_pretrained("<this folder>")',
                'tokenizer = AutoTokenizer.from_pretrained("<this folder>")',
                'words = "Ray Tune tuned this tagger in Berlin .".split()',
                'encoded = tokenizer(words, is_split_into_words=True, truncation=True, '
                'return_tensors="pt")',
                "predicted = model(**encoded).logits.argmax(-1)[0].tolist()",
                "# each word's tag is read at its first sub-token, the one that was trained",
                "first = {}",
                "for position, word in enumerate(encoded.word_ids()):",
                "    if word is not None:",
                "        first.setdefault(word, position)",
                "tags = [model.config.id2label[predicted[first[w]]] for w in sorted(first)]"]


TASK = TokenClassification()
