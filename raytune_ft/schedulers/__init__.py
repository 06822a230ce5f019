"""The scheduler registry: for each `scheduler.type`, one module of this package holding its
settings class, what it can do and its builder (`Scheduler`), like Ray Tune's own
`create_scheduler` table.

Adding a scheduler is one module defining `SCHEDULER` and its line below. Every question of
a scheduler's kind (is it population-based, does it pause trials, ...) asks `scheduler_spec`.
Reading the registry imports no Ray: builders import it when they run.
"""

from __future__ import annotations

from typing import Any

from raytune_ft.config import ComponentKind, component_union, load_entries
from raytune_ft.plan import TrialPlan
from raytune_ft.schedulers._base import TIME_ATTR, Scheduler
from raytune_ft.schedulers._population import (
    FIXED_IN_A_TRIAL,
    FIXED_IN_AN_EPOCH,
    Range,
    StayInDomain,
    bounds,
    mutation_ranges,
    to_tune,
)

__all__ = ["FIXED_IN_AN_EPOCH", "FIXED_IN_A_TRIAL", "SCHEDULERS", "TIME_ATTR", "LogScalePB2",
           "Range", "RescuePBT", "Scheduler", "StayInDomain", "bounds", "build_scheduler",
           "mutation_ranges", "scheduler_spec", "settings_union", "to_tune"]

# scheduler.type -> its module's SCHEDULER; one line per scheduler
SCHEDULERS: dict[str, Scheduler] = load_entries(__name__, "SCHEDULER", (
    "fifo",
    "asha",
    "hyperband",
    "pbt",
    "pb2",
))


def settings_union() -> Any:
    """The `scheduler:` section of the experiment: one settings class per scheduler, told
    apart by `type`."""
    return component_union({name: spec.settings for name, spec in SCHEDULERS.items()},
                           ComponentKind("type", "scheduler"))


def scheduler_spec(scheduler: Any) -> Scheduler:
    """The registry entry of a scheduler: its settings (`config.scheduler`), an experiment
    (anything with a `scheduler`), or a `scheduler.type` name."""
    scheduler = getattr(scheduler, "scheduler", scheduler)
    kind = scheduler if isinstance(scheduler, str) else scheduler.type
    spec = SCHEDULERS.get(kind)
    if spec is None:
        raise ValueError(f"scheduler.type: {kind!r} is not registered; registered: "
                         f"{', '.join(SCHEDULERS)}")
    return spec


def build_scheduler(settings: Any, plan: TrialPlan):
    """A Ray Tune scheduler whose time unit is one evaluation interval (equal samples)."""
    return scheduler_spec(settings).build(settings, plan)


def __getattr__(name: str) -> Any:
    """`RescuePBT` and `LogScalePB2`, the Ray schedulers PBT and PB2 build, imported on first
    use: they import Ray, which reading the registry must not. Public for the `tuner.pkl` of
    experiments started before the component split, which name them at their old paths
    (`raytune_ft.tuning.population`, `raytune_ft.tuning.search`)."""
    if name == "RescuePBT":
        from raytune_ft.schedulers._rescue import RescuePBT

        return RescuePBT
    if name == "LogScalePB2":
        from raytune_ft.schedulers._log_pb2 import LogScalePB2

        return LogScalePB2
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
