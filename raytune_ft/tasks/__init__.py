"""The task registry: one module per kind of problem, each defining `TASK` (a `Task`) with its
own `data:` settings class. `data.kind` chooses the task; the first registered one reads the
data when `kind` is left out (or the one listing the named `data.task` dataset).

Adding a task is one module defining `TASK` and its line below. Reading the registry imports
no torch and no Ray (task modules import them inside their methods).
"""

from __future__ import annotations

from typing import Any

from raytune_ft.config import ComponentKind, DataSettings, component_union, load_entries
from raytune_ft.errors import ConfigError
from raytune_ft.tasks._base import (
    DataBundle,
    Metric,
    Task,
    example_count,
    label_list,
    summed_cross_entropy,
)

__all__ = ["TASKS", "DataBundle", "Metric", "Task", "canonical_dataset", "dataset_names",
           "default_metrics", "example_count", "get_task", "kind_of", "label_list",
           "settings_union", "summed_cross_entropy", "task_for", "task_metrics"]

# data.kind -> its module's TASK; one line per task, the first reads data without a kind
TASKS: dict[str, Task] = load_entries(__name__, "TASK", (
    "sequence_classification",
    "token_classification",
    "image_classification",
    "question_answering",
    "seq2seq",
))


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ConfigError(f"data.kind: {name!r} is not a registered task; registered: "
                          f"{', '.join(TASKS)}")
    return TASKS[name]


def task_for(data: DataSettings) -> Task:
    """The task that reads `data` (its settings say which)."""
    return get_task(data.kind)


def canonical_dataset(name: str) -> str:
    """A dataset name as the tasks list it: lowercase, aliases resolved."""
    aliases = {alias: real for task in TASKS.values() for alias, real in task.aliases.items()}
    return aliases.get(name.lower(), name.lower())


def kind_of(section: dict) -> str:
    """The task of a raw `data:` section: its `kind`, else the one listing its named dataset,
    else the first registered."""
    if section.get("kind") is not None:
        return section["kind"]
    dataset = section.get("task")
    if isinstance(dataset, str):
        for name, task in TASKS.items():
            if canonical_dataset(dataset) in task.datasets:
                return name
    return next(iter(TASKS))


def settings_union() -> Any:
    """The `data:` section of the experiment: one settings class per task, told apart by
    `kind` (or by `_kind_of` where it is left out)."""
    return component_union({name: task.settings for name, task in TASKS.items()},
                           ComponentKind("kind", "task", default=kind_of))


def dataset_names() -> tuple[str, ...]:
    """Every dataset the registered tasks read by name, in registry order."""
    return tuple(name for task in TASKS.values() for name in task.datasets)


def default_metrics() -> dict[str, str]:
    """Dataset -> the metric an experiment tunes when it names none (CoLA: eval_mcc)."""
    return {name: metric for task in TASKS.values()
            for name, metric in task.default_metric.items()}


def task_metrics() -> tuple[Metric, ...]:
    """Every eval metric a registered task can report (eval_loss aside), each once, in
    registry and declaration order."""
    seen: dict[str, Metric] = {}
    for task in TASKS.values():
        for metric in task.metrics:
            seen.setdefault(metric.name, metric)
    return tuple(seen.values())
