"""Read GLUE folders and tabular files, and tokenize each split once in the driver.

A tokenized split is four flat numpy arrays (token ids, token type ids, offsets, labels), so
Ray's object store shares it with every trial without copying and no trial tokenizes.
"""

from __future__ import annotations

import csv
import logging
import os
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
        train = _read_table(cfg.train_file, "data.train_file")
        dev = _read_table(cfg.eval_file, "data.eval_file")
        columns, label_column = list(cfg.text_columns), cfg.label_column
        for frame, where in ((train, "data.train_file"), (dev, "data.eval_file")):
            _check_columns(frame, columns, label_column, where)
        label_names = sorted({str(v) for v in train[label_column]})
        where = ("data.train_file", "data.eval_file")
    else:
        task = GLUE_TASKS[canonical_task(cfg.task)]
        folder = glue_folder(cfg, task)
        if folder is None:
            return _read_hub(task)
        train = _read_glue_tsv(folder / "train.tsv", task)
        dev = _read_glue_tsv(folder / task.dev_file, task)
        label_names, columns, label_column = list(task.labels), list(task.text_columns), \
            task.label_column
        source = "data.path" if cfg.path else "RAYTUNE_FT_DATA_DIR"
        where = (f"{source} ({folder / 'train.tsv'})", f"{source} ({folder / task.dev_file})")
        for frame, name in zip((train, dev), where):
            missing = [c for c in [*columns, label_column] if c not in frame.columns]
            if missing:
                raise DataError(f"{name}: not a GLUE {task.folder} file: column(s) "
                                f"{', '.join(missing)} missing; columns present: "
                                f"{', '.join(map(str, frame.columns))}")
    splits = []
    for frame, name in zip((train, dev), where):
        splits.append(_to_split(frame, columns, label_column, label_names, name))
    return splits[0], splits[1], label_names


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


def _read_glue_tsv(path: Path, task: GlueTask) -> pd.DataFrame:
    # GLUE TSVs: UTF-8 with a BOM (MRPC), quotes are literal text (QUOTE_NONE).
    try:
        return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, encoding="utf-8-sig",
                           dtype=str, keep_default_na=False, on_bad_lines="error",
                           header=0 if task.header else None,
                           names=list(task.columns) if task.columns else None)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read as a GLUE TSV: {error}") from None


def _read_table(path_text: str, where: str) -> pd.DataFrame:
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise DataError(f"{where}: {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".tsv", ".csv"):
            return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", dtype=str,
                               keep_default_na=False, encoding="utf-8-sig")
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except Exception as error:  # noqa: BLE001 - any reader failure is the user's file
        raise DataError(f"{where}: cannot read {path}: {error}") from None
    raise DataError(f"{where}: {path} has suffix {suffix!r}; allowed: .csv, .tsv, .jsonl, "
                    ".json, .parquet")


def _check_columns(frame: pd.DataFrame, text_columns: list[str], label_column: str,
                   where: str) -> None:
    present = f"columns present in {where}: {', '.join(map(str, frame.columns))}"
    missing = [c for c in text_columns if c not in frame.columns]
    if missing:
        raise DataError(f"data.text_columns: {', '.join(map(repr, missing))} not found; "
                        f"{present}")
    if label_column not in frame.columns:
        raise DataError(f"data.label_column: {label_column!r} not found; {present}")


def _to_split(frame: pd.DataFrame, columns: list[str], label_column: str,
              label_names: list[str], where: str) -> TextSplit:
    index = {name: i for i, name in enumerate(label_names)}
    raw = [str(v) for v in frame[label_column]]
    unknown = sorted(set(raw) - set(index))
    if unknown:
        raise DataError(f"{where}: label(s) {', '.join(map(repr, unknown[:5]))} in column "
                        f"{label_column!r} are not in the label set {label_names}")
    texts = [[str(v) for v in frame[c]] for c in columns]
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
    task = canonical_task(cfg.task) if cfg.task else Path(cfg.train_file).stem
    metrics = ["eval_accuracy", "eval_loss", "eval_mcc"]
    if len(label_names) == 2:
        metrics.append("eval_f1")
    return DataBundle(tokenize(train, tokenizer, max_length), tokenize(dev, tokenizer, max_length),
                      label_names, int(tokenizer.pad_token_id or 0), task, metrics)
