"""What one registered tracker is, and what the runner hands it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrackingContext:
    """One run of an experiment, as a tracker sees it (plain values: no experiment schema)."""

    settings: Any  # this tracker's own settings (`tracking.<name>`)
    name: str  # the experiment's `name`
    metric: str  # the experiment's metric (the first objective)
    record: dict  # the validated experiment as JSON values (the parent run's params)
    experiment_dir: str  # <storage_path>/<name>: a path or a URI
    record_file: str  # the experiment record in it (raytune_ft.json)
    iterations: int  # a full-budget trial's Tune iterations: terminated vs stopped

    @property
    def group(self) -> str:
        """The experiment folder's name: a run group per experiment run."""
        return self.experiment_dir.rstrip("/").rsplit("/", 1)[-1]


@dataclass(frozen=True)
class End:
    """What the end-of-run step hands each tracker."""

    analysis_dir: Path | None  # the written analysis folder (local), None if the export failed
    best: tuple[str, float] | None  # (metric, value) of the best trial
    interrupted: bool


@dataclass(frozen=True)
class Tracker:
    """One tracker: its module defines `TRACKER = Tracker(...)`."""

    settings: type  # its pydantic settings class (`tracking.<name>:`), a TrackerSettings
    package: str  # the module it needs (checked at validation)
    extra: str  # the raytune-ft extra that installs it
    callbacks: Callable[[TrackingContext], list]  # Tune callbacks for the RunConfig (driver)
    header: Callable[[Any], str]  # (settings) -> the run header's words about it
    finish: Callable[[TrackingContext, End], None] | None = None  # after the analysis
    # (settings, the record a resume read them from, else None) -> None, or ConfigError
    # before Ray starts: a setting the tool would refuse at its first log (validate, tune and
    # resume exit 2 on it; a resume takes no --set, so its error names what it can change)
    check: Callable[[Any, str | None], None] | None = None
    example: dict[str, Any] = field(default_factory=dict)  # settings that validate (tests)
