"""Read GLUE folders and tabular files, and tokenize each split once in the driver.

A tokenized split is four flat numpy arrays (token ids, token type ids, offsets, labels), so
Ray's object store shares it with every trial without copying and no trial tokenizes.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from raytune_ft.config import TASK_ALIASES, DataConfig
from raytune_ft.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlueTask:
    folder: str  # directory name in a GLUE download
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...]  # label names in id order
    dev_file: str = "dev.tsv"
    header: bool = True
    columns: tuple[str, ...] = ()  # names for header-less files (CoLA)
    hub_name: str = ""


GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask("CoLA", ("sentence",), "label", ("0", "1"), header=False,
                     columns=("source", "label", "original_label", "sentence"), hub_name="cola"),
    "sst2": GlueTask("SST-2", ("sentence",), "label", ("0", "1"), hub_name="sst2"),
    "mrpc": GlueTask("MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), hub_name="mrpc"),
    "rte": GlueTask("RTE", ("sentence1", "sentence2"), "label",
                    ("entailment", "not_entailment"), hub_name="rte"),
    "qnli": GlueTask("QNLI", ("question", "sentence"), "label",
                     ("entailment", "not_entailment"), hub_name="qnli"),
    "qqp": GlueTask("QQP", ("question1", "question2"), "is_duplicate", ("0", "1"),
                    hub_name="qqp"),
    "mnli": GlueTask("MNLI", ("sentence1", "sentence2"), "gold_label",
                     ("entailment", "neutral", "contradiction"), dev_file="dev_matched.tsv",
                     hub_name="mnli"),
}
# GLUE reports F1 (of label 1, "equivalent"/"duplicate") only for these; RTE and QNLI would make
# `not_entailment` the positive class, SST-2 and CoLA are scored by accuracy and MCC.
GLUE_F1_TASKS = ("mrpc", "qqp")


@dataclass
class TextSplit:
    """Raw examples: one or two text columns and integer labels."""

    texts: list[list[str]]  # one list per text column
    labels: np.ndarray


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


@dataclass
class DataBundle:
    """What the driver hands every trial through the object store."""

    train: TokenizedSplit
    eval: TokenizedSplit
    label_names: list[str]
    pad_token_id: int
    task: str  # GLUE task name or the train file's name
    metrics: list[str] = field(default_factory=list)


def canonical_task(name: str) -> str:
    """The GLUE_TASKS key of a task name (the schema has already refused unknown ones)."""
    key = TASK_ALIASES.get(name.lower(), name.lower())
    if key not in GLUE_TASKS:
        raise DataError(f"data.task: {name!r} is not a supported GLUE task; allowed: "
                        f"{', '.join(GLUE_TASKS)}")
    return key


def read_splits(cfg: DataConfig) -> tuple[TextSplit, TextSplit, list[str]]:
    """Read train and eval text with integer labels, and the label names."""
    if cfg.train_file is not None:
        tables = (_read_table(cfg.train_file, "data.train_file"),
                  _read_table(cfg.eval_file, "data.eval_file"))
        columns, label_column = list(cfg.text_columns), cfg.label_column
        for table in tables:
            _check_columns(table.frame, columns, label_column, table.where)
        labels = [_labels(table, label_column) for table in tables]
        label_names = sort_labels(set(labels[0]))
    else:
        task = GLUE_TASKS[canonical_task(cfg.task)]
        folder = glue_folder(cfg, task)
        if folder is None:
            return _read_hub(task)
        source = "data.path" if cfg.path else "RAYTUNE_FT_DATA_DIR"
        tables = tuple(_read_glue_tsv(folder / name, task, source)
                       for name in ("train.tsv", task.dev_file))
        label_names, columns, label_column = list(task.labels), list(task.text_columns), \
            task.label_column
        for table in tables:
            missing = [c for c in [*columns, label_column] if c not in table.frame.columns]
            if missing:
                raise DataError(f"{table.where}: {table.path} is not a GLUE {task.folder} file: "
                                f"column(s) {', '.join(missing)} missing; columns present: "
                                f"{', '.join(map(str, table.frame.columns))}")
        labels = [_labels(table, label_column) for table in tables]
    train, dev = (_to_split(table, columns, raw, label_column, label_names)
                  for table, raw in zip(tables, labels))
    return train, dev, label_names


def sort_labels(names: set[str]) -> list[str]:
    """Label names in id order: by value when every name is an integer ("2" before "10"),
    else alphabetically."""
    if all(re.fullmatch(r"[+-]?\d+", name) for name in names):
        return sorted(names, key=lambda name: (int(name), name))
    return sorted(names)


def glue_folder(cfg: DataConfig, task: GlueTask) -> Path | None:
    """The folder holding the task's TSVs, or None to read from the hub."""
    root = cfg.path or os.environ.get("RAYTUNE_FT_DATA_DIR")
    if root is None:
        return None
    root = Path(root).expanduser()
    where = "data.path" if cfg.path else "RAYTUNE_FT_DATA_DIR"
    for candidate in (root / task.folder, root):
        if (candidate / "train.tsv").is_file():
            if not (candidate / task.dev_file).is_file():
                raise DataError(f"{where}: {candidate / task.dev_file} not found")
            return candidate
    raise DataError(f"{where}: no {task.folder}/train.tsv under {root}")


@dataclass
class _Table:
    """A file's rows, and where each row sits in the file, so errors can point at it."""

    frame: pd.DataFrame
    where: str  # the config field that named the file: data.train_file, data.path, ...
    path: Path
    lines: list[int] | None  # the line each row starts on; None: rows are counted (Parquet)

    def at(self, row: int) -> str:
        place = f"line {self.lines[row]}" if self.lines is not None else f"row {row + 1}"
        return f"{self.where}: {self.path} {place}"


def _read_glue_tsv(path: Path, task: GlueTask, where: str) -> _Table:
    # GLUE TSVs: UTF-8 with a BOM (MRPC), quotes are literal text (QUOTE_NONE).
    return _read_delimited(path, where, "\t", task.columns if not task.header else None)


def _read_table(path_text: str, where: str) -> _Table:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DataError(f"{where}: {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        return _read_delimited(path, where, "\t" if suffix == ".tsv" else ",")
    if suffix == ".jsonl":
        return _read_jsonl(path, where)
    try:
        if suffix == ".json":
            return _Table(pd.read_json(path, dtype=False), where, path, None)
        if suffix == ".parquet":
            return _Table(pd.read_parquet(path), where, path, None)
    except Exception as error:  # noqa: BLE001 - any reader failure is the user's file
        raise DataError(f"{where}: cannot read {path}: {error}") from None
    raise DataError(f"{where}: {path} has suffix {suffix!r}; allowed: .csv, .tsv, .jsonl, "
                    ".json, .parquet")


def _read_delimited(path: Path, where: str, sep: str, names: tuple[str, ...] | None = None
                    ) -> _Table:
    """Read a CSV (quotes are syntax) or a TSV (quotes are text, as in GLUE: QUOTE_NONE).

    Every row must have as many fields as the header: a stray tab or quote would otherwise
    shift or merge examples silently. Blank lines are skipped; cells stay strings.
    """
    quoting = csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL
    header, rows, lines, start = list(names) if names else None, [], [], 1
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle, delimiter=sep, quoting=quoting)
            for row in reader:
                if row and header is None:
                    header = row
                elif row:
                    if len(row) != len(header):
                        raise DataError(f"{where}: {path} line {start}: {len(row)} fields, the "
                                        f"header has {len(header)}{_field_hint(sep)}")
                    rows.append(row)
                    lines.append(start)
                start = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{where}: cannot read {path} (near line {start}): {error}") from None
    if header is None:
        raise DataError(f"{where}: {path} is empty")
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(f"{where}: {path} header names column(s) {', '.join(map(repr, repeated))}"
                        " more than once")
    return _Table(pd.DataFrame(rows, columns=header, dtype=object), where, path, lines)


def _field_hint(sep: str) -> str:
    if sep == "\t":
        return " (TSV is read without quoting: a tab inside a text splits it)"
    return " (a comma inside a text needs the text in double quotes)"


def _read_jsonl(path: Path, where: str) -> _Table:
    """One JSON object per line; values keep their JSON types (null stays missing)."""
    records, lines = [], []
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{where}: {path} line {number}: not JSON ({error})"
                                    ) from None
                if not isinstance(record, dict):
                    raise DataError(f"{where}: {path} line {number}: a JSON "
                                    f"{type(record).__name__}, expected an object "
                                    "({\"column\": value, ...})")
                records.append(record)
                lines.append(number)
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{where}: cannot read {path}: {error}") from None
    return _Table(pd.DataFrame.from_records(records).astype(object), where, path, lines)


def _check_columns(frame: pd.DataFrame, text_columns: list[str], label_column: str,
                   where: str) -> None:
    present = f"columns present in {where}: {', '.join(map(str, frame.columns))}"
    missing = [c for c in text_columns if c not in frame.columns]
    if missing:
        raise DataError(f"data.text_columns: {', '.join(map(repr, missing))} not found; "
                        f"{present}")
    if label_column not in frame.columns:
        raise DataError(f"data.label_column: {label_column!r} not found; {present}")


def _is_missing(value) -> bool:
    """None, NaN or pd.NA (null in JSONL, Parquet), or an empty cell (CSV, TSV)."""
    if value is None or value is pd.NA:
        return True
    if isinstance(value, (float, np.floating)):
        return math.isnan(value)
    return isinstance(value, str) and not value.strip()


def _label_text(value) -> str | None:
    """A label value as its name; None when missing. 1, 1.0 and "1" are all the label "1"."""
    if _is_missing(value):
        return None
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else str(float(value))
    return str(value).strip()


def _refuse_missing(table: _Table, column: str, missing: list[int], what: str) -> None:
    if missing:
        raise DataError(f"{table.at(missing[0])}: column {column!r} is empty or null "
                        f"({len(missing)} row(s) in all); every example needs a {what}")


def _labels(table: _Table, column: str) -> list[str]:
    raw = [_label_text(v) for v in table.frame[column]]
    _refuse_missing(table, column, [i for i, v in enumerate(raw) if v is None], "label")
    return raw


def _to_split(table: _Table, columns: list[str], raw: list[str], label_column: str,
              label_names: list[str]) -> TextSplit:
    index = {name: i for i, name in enumerate(label_names)}
    outside = [i for i, v in enumerate(raw) if v not in index]
    if outside:
        unknown = sorted({raw[i] for i in outside})
        raise DataError(f"{table.at(outside[0])}: label(s) {', '.join(map(repr, unknown[:5]))} "
                        f"in column {label_column!r} are not in the label set {label_names}")
    texts = []
    for column in columns:
        values = list(table.frame[column])
        _refuse_missing(table, column, [i for i, v in enumerate(values) if _is_missing(v)],
                        "text")
        texts.append([v if isinstance(v, str) else str(v) for v in values])
    return TextSplit(texts, np.fromiter((index[v] for v in raw), dtype=np.int64, count=len(raw)))


def _read_hub(task: GlueTask) -> tuple[TextSplit, TextSplit, list[str]]:
    try:
        import datasets

        loaded = datasets.load_dataset("nyu-mll/glue", task.hub_name)
    except Exception as error:  # noqa: BLE001 - offline, missing, or refused by the hub
        raise DataError(f"data.path: not set and the hub copy of GLUE {task.hub_name} could not "
                        f"be loaded ({type(error).__name__}); set data.path or "
                        "RAYTUNE_FT_DATA_DIR to a folder of GLUE TSVs") from None
    hub_columns = {"mrpc": ("sentence1", "sentence2"), "qqp": ("question1", "question2"),
                   "mnli": ("premise", "hypothesis")}
    columns = hub_columns.get(task.hub_name, task.text_columns)
    dev_name = "validation_matched" if task.hub_name == "mnli" else "validation"
    splits = [TextSplit([list(loaded[s][c]) for c in columns],
                        np.asarray(loaded[s]["label"], dtype=np.int64))
              for s in ("train", dev_name)]
    return splits[0], splits[1], list(task.labels)


def subset(split: TextSplit, size: int | None, seed: int) -> TextSplit:
    """A fixed random subset (the same in every trial and every run for a seed)."""
    if size is None or size >= len(split.labels):
        return split
    keep = np.sort(np.random.default_rng(seed).choice(len(split.labels), size, replace=False))
    return TextSplit([[col[i] for i in keep] for col in split.texts], split.labels[keep])


def tokenize(split: TextSplit, tokenizer, max_length: int) -> TokenizedSplit:
    """Tokenize once, with truncation and no padding; lengths stay per example."""
    encoded = tokenizer(*split.texts, truncation=True, max_length=max_length, padding=False,
                        return_attention_mask=False)
    ids = encoded["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1]))
    type_ids = None
    if "token_type_ids" in encoded:
        type_ids = np.fromiter((t for row in encoded["token_type_ids"] for t in row),
                               dtype=np.int8, count=int(offsets[-1]))
    return TokenizedSplit(flat, type_ids, offsets, split.labels.astype(np.int64))


def build_bundle(cfg: DataConfig, tokenizer, max_length: int) -> DataBundle:
    """Read, subset and tokenize both splits: the driver's one-time data work."""
    train, dev, label_names = read_splits(cfg)
    train = subset(train, cfg.max_train_samples, cfg.subset_seed)
    dev = subset(dev, cfg.max_eval_samples, cfg.subset_seed)
    log.info("tokenizing %d train and %d eval examples", len(train.labels), len(dev.labels))
    glue_task = canonical_task(cfg.task) if cfg.task else None
    return DataBundle(tokenize(train, tokenizer, max_length), tokenize(dev, tokenizer, max_length),
                      label_names, int(tokenizer.pad_token_id or 0),
                      glue_task or Path(cfg.train_file).stem,
                      task_metrics(glue_task, len(label_names)))


def task_metrics(glue_task: str | None, num_labels: int) -> list[str]:
    """The metrics a trial reports: F1 (of label id 1) where GLUE reports it, and for any
    binary file of the user's (whose label 1 the run header names)."""
    metrics = ["eval_accuracy", "eval_loss", "eval_mcc"]
    if num_labels == 2 and (not glue_task or glue_task in GLUE_F1_TASKS):
        metrics.append("eval_f1")
    return metrics
