"""The GLUE tasks sequence classification reads by name: files, columns, labels, aliases.

No third-party imports: the config reads the names and aliases from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from raytune_ft.errors import DataError

if TYPE_CHECKING:
    from raytune_ft.config import DataSettings


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
GLUE_ALIASES = {"sst-2": "sst2", "sst_2": "sst2"}  # other spellings of GLUE_TASKS keys
# GLUE scores CoLA by Matthews correlation: without `metric:` CoLA tunes eval_mcc.
GLUE_DEFAULT_METRICS = {"cola": "eval_mcc"}


def canonical_task(name: str) -> str:
    """The GLUE_TASKS key of a task name (the schema has already refused unknown ones)."""
    key = GLUE_ALIASES.get(name.lower(), name.lower())
    if key not in GLUE_TASKS:
        raise DataError(f"data.task: {name!r} is not a supported GLUE task; allowed: "
                        f"{', '.join(GLUE_TASKS)}")
    return key


def glue_folder(cfg: DataSettings, task: GlueTask) -> Path | None:
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

