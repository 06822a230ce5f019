"""Text sequence classification: one or two texts per example, one label (GLUE, or files).

The driver tokenizes each split once into four flat numpy arrays (token ids, token type ids,
offsets, labels), so Ray's object store shares them with every trial and no trial tokenizes.
A batch is padded to its longest example. The loss is cross-entropy over the one logit row of
each example; the metrics are accuracy, Matthews correlation and, where GLUE reports it (and
for binary files), F1 of label id 1.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import model_validator

from raytune_ft.config import DataSettings, did_you_mean
from raytune_ft.errors import ConfigError
from raytune_ft.tasks._base import (
    DataBundle,
    Metric,
    Task,
    label_list,
    ragged,
    summed_cross_entropy,
)
from raytune_ft.tasks._glue import (
    GLUE_ALIASES,
    GLUE_DEFAULT_METRICS,
    GLUE_F1_TASKS,
    GLUE_TASKS,
    canonical_task,
)

if TYPE_CHECKING:
    import torch

    from raytune_ft.tasks._tables import TextSplit

log = logging.getLogger(__name__)


class SequenceData(DataSettings):
    """A GLUE task by name, or the user's table of texts and labels."""

    kind: Literal["sequence_classification"] = "sequence_classification"
    task: str | None = None  # GLUE task (mrpc, sst2, rte, cola, qnli, qqp, mnli); None = files
    path: str | None = None  # folder of GLUE TSVs; default $RAYTUNE_FT_DATA_DIR, else the hub
    text_columns: list[str] | None = None  # with train_file: one column (single sentence)
    #                                        or two (pairs) of a CSV/TSV/JSONL/Parquet file
    label_column: str | None = None  # with train_file: the column of labels
    path_fields = (*DataSettings.path_fields, "path")

    @property
    def source(self) -> str:
        return self.task or str(self.train_file)

    @model_validator(mode="after")
    def _task_or_files(self) -> SequenceData:
        if self.task is not None and GLUE_ALIASES.get(self.task.lower(),
                                                      self.task.lower()) not in GLUE_TASKS:
            hint = did_you_mean(self.task.lower(), tuple(GLUE_TASKS))
            regression = " (a regression task, not supported yet)" if self.task.lower() in (
                "stsb", "sts-b") else ""
            raise ValueError(f"data.task: {self.task!r} is not a supported GLUE task"
                             f"{regression}{hint}; allowed: {', '.join(GLUE_TASKS)}")
        if self.task is None and self.train_file is None:
            raise ValueError("set data.task (a named dataset) or data.train_file (the user's "
                             "training data)")
        if self.train_file is None:
            return self
        if not self.text_columns or self.label_column is None:
            raise ValueError("data.text_columns and data.label_column are required with "
                             "data.train_file")
        if len(self.text_columns) > 2:
            raise ValueError(f"data.text_columns has {len(self.text_columns)} columns, "
                             "allowed: 1 or 2")
        return self


@dataclass
class TokenizedSplit:
    """A split as flat arrays: example i is ids[offsets[i]:offsets[i+1]]."""

    ids: np.ndarray  # int32
    type_ids: np.ndarray | None  # int8, None for models without token types
    offsets: np.ndarray  # int64, n + 1
    labels: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)


# A split this large (QQP, MNLI, all of SST-2) is tokenized in chunks under a progress bar;
# smaller ones (tests, subsets) take seconds and stay quiet.
PROGRESS_BAR_ABOVE = 50_000
TOKENIZE_CHUNK = 10_000


def tokenize(split: TextSplit, tokenizer, max_length: int,
             progress_above: int = PROGRESS_BAR_ABOVE) -> TokenizedSplit:
    """Tokenize once, with truncation and no padding; lengths stay per example."""
    encoded = _encode(split.texts, tokenizer, max_length, progress_above)
    flat, offsets = ragged(encoded["input_ids"])
    type_ids = None
    if "token_type_ids" in encoded:
        type_ids = np.fromiter((t for row in encoded["token_type_ids"] for t in row),
                               dtype=np.int8, count=int(offsets[-1]))
    return TokenizedSplit(flat, type_ids, offsets, split.labels.astype(np.int64))


def _encode(texts: list[list[str]], tokenizer, max_length: int, progress_above: int) -> dict:
    """The tokenizer's output for every example; chunk by chunk with a bar (stderr) when the
    split has more than `progress_above` examples, which gives the same lists."""
    def encode(rows: slice) -> dict:
        return tokenizer(*(column[rows] for column in texts), truncation=True,
                         max_length=max_length, padding=False, return_attention_mask=False)

    total = len(texts[0])
    if total <= progress_above:
        return encode(slice(None))
    from tqdm.auto import tqdm

    encoded: dict[str, list] = {}
    with tqdm(total=total, desc="tokenizing", unit="ex", unit_scale=True) as bar:
        for start in range(0, total, TOKENIZE_CHUNK):
            part = encode(slice(start, start + TOKENIZE_CHUNK))
            for key, rows in part.items():
                encoded.setdefault(key, []).extend(rows)
            bar.update(len(part["input_ids"]))
    return encoded


def build_bundle(cfg: SequenceData, tokenizer, max_length: int) -> DataBundle:
    """Read, subset and tokenize both splits: the driver's one-time data work."""
    from raytune_ft.tasks._tables import read_splits, subset

    train, dev, label_names = read_splits(cfg)
    train = subset(train, cfg.max_train_samples, cfg.subset_seed)
    dev = subset(dev, cfg.max_eval_samples, cfg.subset_seed)
    log.info("tokenizing %d train and %d eval examples", len(train.labels), len(dev.labels))
    glue_task = canonical_task(cfg.task) if cfg.task else None
    return DataBundle(tokenize(train, tokenizer, max_length), tokenize(dev, tokenizer, max_length),
                      label_names, int(tokenizer.pad_token_id or 0),
                      glue_task or Path(cfg.train_file).stem,
                      task_metrics(glue_task, len(label_names)), TASK.name)


def task_metrics(glue_task: str | None, num_labels: int) -> list[str]:
    """The metrics a trial reports: F1 (of label id 1) where GLUE reports it, and for any
    binary file of the user's (whose label 1 the run header names)."""
    metrics = ["eval_accuracy", "eval_loss", "eval_mcc"]
    if num_labels == 2 and (not glue_task or glue_task in GLUE_F1_TASKS):
        metrics.append("eval_f1")
    return metrics


def collate(split: TokenizedSplit, indices: np.ndarray, pad_token_id: int) -> dict:
    """Pad the examples at `indices` to the longest of them (not to max_length)."""
    import torch

    starts, ends = split.offsets[indices], split.offsets[indices + 1]
    width = int((ends - starts).max())
    ids = np.full((len(indices), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(indices), width), dtype=np.int64)
    types = np.zeros((len(indices), width), dtype=np.int64) if split.type_ids is not None else None
    for row, (start, end) in enumerate(zip(starts, ends)):
        ids[row, :end - start] = split.ids[start:end]
        mask[row, :end - start] = 1
        if types is not None:
            types[row, :end - start] = split.type_ids[start:end]
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
             "labels": torch.from_numpy(split.labels[indices])}
    if types is not None:
        batch["token_type_ids"] = torch.from_numpy(types)
    return batch


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, num_labels: int) -> dict:
    """Accuracy, Matthews correlation (multi-class: Gorodkin's), and F1 of label id 1 for
    binary tasks; 0.0 where a score is undefined (one class only, no positive prediction)."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    with warnings.catch_warnings():  # one class in labels and predictions: MCC 0.0, not news
        warnings.filterwarnings("ignore", "A single label was found", UserWarning)
        mcc = float(matthews_corrcoef(labels, predictions))
    metrics = {"eval_accuracy": float(accuracy_score(labels, predictions)), "eval_mcc": mcc}
    if num_labels == 2:
        metrics["eval_f1"] = float(f1_score(labels, predictions, pos_label=1, average="binary",
                                            zero_division=0.0))
    return metrics


def load_model(path: str, label_names: list[str], seed: int) -> torch.nn.Module:
    """The pretrained encoder with a classification head for `label_names`: fresh from
    `seed`, or the folder's own where its labels are these (`load_pretrained`)."""
    from raytune_ft.training.model import load_pretrained

    return load_pretrained(SequenceClassification.auto_class, path, seed, label_names)


class SequenceClassification(Task):
    name = "sequence_classification"
    settings = SequenceData
    example = {"task": "sst2"}
    metrics = (Metric("eval_accuracy", "max", 0.0), Metric("eval_f1", "max", 0.0),
               Metric("eval_mcc", "max", -1.0))
    datasets = tuple(GLUE_TASKS)
    aliases = GLUE_ALIASES
    default_metric = GLUE_DEFAULT_METRICS
    pipeline_tag = "text-classification"
    auto_class = "AutoModelForSequenceClassification"

    def load_data(self, data: SequenceData, model_path: str, max_length: int) -> DataBundle:
        """Tokenize with the model's tokenizer, and refuse a tokenizer that cannot be it."""
        from raytune_ft.training.model import check_tokenizer, load_tokenizer

        tokenizer = load_tokenizer(model_path)
        bundle = build_bundle(data, tokenizer, max_length)
        check_tokenizer(tokenizer, model_path, bundle.train)
        return bundle

    def describe(self, bundle: DataBundle, shown: int = 20) -> list[tuple[str, str]]:
        """id -> label, and which label F1 counts as positive (label id 1) where reported."""
        names = bundle.label_names
        text = label_list(names, shown)
        if "eval_f1" in bundle.metrics:
            text += f"; eval_f1 counts 1 -> {names[1]!r} as the positive class"
        return [("labels", text)]

    def warnings(self, bundle: DataBundle, data: SequenceData) -> list[str]:
        """A label that no training example has."""
        counts = np.bincount(bundle.train.labels, minlength=len(bundle.label_names))
        empty = [f"{i} -> {name!r}" for i, name in enumerate(bundle.label_names)
                 if not counts[i]]
        if not empty:
            return []
        subset = data.max_train_samples
        why = f" (data.max_train_samples {subset} left none)" if subset else ""
        return [f"no training example has label(s) {', '.join(empty)}{why}"]

    def check_metric(self, metric: str, bundle: DataBundle, data: SequenceData) -> None:
        if metric.startswith("eval_") and metric not in bundle.metrics:
            glue = "; GLUE reports F1 for MRPC and QQP only" if data.task else ""
            raise ConfigError(f"metric: {metric!r} is not reported for {bundle.task} "
                              f"({len(bundle.label_names)} labels{glue}); reported: "
                              f"{', '.join(bundle.metrics)}")

    def load_model(self, path: str, label_names: list[str], seed: int) -> torch.nn.Module:
        return load_model(path, label_names, seed)

    def collate(self, data: DataBundle, split: TokenizedSplit, indices: np.ndarray) -> dict:
        return collate(split, indices, data.pad_token_id)

    def forward(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits

    def loss(self, outputs: torch.Tensor, batch: dict, label_smoothing: float = 0.0
             ) -> torch.Tensor:
        return summed_cross_entropy(outputs, batch["labels"], label_smoothing)

    def predict(self, outputs: torch.Tensor, batch: dict) -> np.ndarray:
        return outputs.float().argmax(-1).cpu().numpy()

    def compute_metrics(self, data: DataBundle, predictions: list[tuple[np.ndarray, np.ndarray]]
                        ) -> dict[str, float]:
        split = data.eval
        predicted = np.empty(len(split), dtype=np.int64)
        for indices, values in predictions:
            predicted[indices] = values
        return classification_metrics(predicted, split.labels, len(data.label_names))

    def save_processor(self, model_path: str, out: str, max_length: int) -> None:
        from raytune_ft.training.model import load_tokenizer

        tokenizer = load_tokenizer(model_path)
        tokenizer.model_max_length = max_length  # truncation=True cuts as in training
        tokenizer.save_pretrained(out)

    def usage(self) -> list[str]:
        return [f"from transformers import {self.auto_class}, AutoTokenizer", "",
                f'model = {self.auto_class}.from_pretrained("<this folder>")',
                'tokenizer = AutoTokenizer.from_pretrained("<this folder>")']


TASK = SequenceClassification()
