"""Read sequence-classification data: GLUE folders (or the hub) and tabular files.

Every reader checks what a user can get wrong (missing columns, empty cells, unknown labels,
stray tabs) and names the file, the line and the config field.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from raytune_ft.errors import DataError
from raytune_ft.tasks._glue import GLUE_TASKS, GlueTask, canonical_task, glue_folder

if TYPE_CHECKING:
    from raytune_ft.config import DataSettings


@dataclass
class TextSplit:
    """Raw examples: one or two text columns and integer labels."""

    texts: list[list[str]]  # one list per text column
    labels: np.ndarray


def read_splits(cfg: DataSettings) -> tuple[TextSplit, TextSplit, list[str]]:
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


_WHOLE_NUMBER = re.compile(r"([+-]?\d+)\.0+")


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
    text = str(value).strip()
    # A float column written to CSV/TSV ("1.0", "2.00"): the integer label, as from JSONL.
    return whole.group(1) if (whole := _WHOLE_NUMBER.fullmatch(text)) else text


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
    from raytune_ft.tasks._base import subset_indices

    keep = subset_indices(len(split.labels), size, seed)
    if keep is None:
        return split
    return TextSplit([[col[i] for i in keep] for col in split.texts], split.labels[keep])
