"""What one registered scheduler is: its settings class, what it can do, how it is built."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from raytune_ft.plan import TrialPlan

TIME_ATTR = "training_iteration"  # one evaluation interval: equal samples for every trial


@dataclass(frozen=True)
class Scheduler:
    """One scheduler: its module defines `SCHEDULER = Scheduler(...)`.

    Every place that depends on the kind of scheduler (the trainable's checkpoint cadence and
    dropout seed, checkpoint retention, the ranking rule, confirm, replay, which searchers
    may drive it) asks for a capability here rather than for a class."""

    settings: type  # its pydantic settings class (`scheduler:`), a config.SchedulerSettings
    build: Callable[[Any, TrialPlan], Any]  # (settings, plan) -> a Ray Tune TrialScheduler;
    #                                         Ray is imported when it runs
    example: dict[str, Any] = field(default_factory=dict)  # settings that validate (tests)
    # Trials exchange weights: a clone takes a donor's checkpoint, config and seed, and is
    # ranked by its last result (the final population), not its best. It picks and mutates
    # its own configurations, so no searcher can drive it.
    population: bool = False
    # Write a checkpoint at every iteration (run.checkpoint_every is ignored): an exploit
    # clones the donor's checkpoint of its last perturbation point.
    checkpoint_every_iteration: bool = False
    # Ray may pause a trial and resume it later (from its last checkpoint).
    pauses_trials: bool = False
    # A diverged trial keeps reporting its worst values at every evaluation point instead
    # of ending, so the scheduler can replace it with a clone of a healthy trial.
    keeps_diverged: bool = False

    def checkpoints_to_keep(self, settings: Any, keep: int, capped: bool) -> int | None:
        """How many checkpoints Ray keeps per trial (None: every one), for `keep`
        (`run.checkpoints_to_keep`) and whether the user set it (`capped`).

        A population clones the checkpoint a donor wrote at its last perturbation point,
        which can be behind its newest one: every checkpoint is kept unless the user sets a
        cap, and a cap is raised to what the scheduler's settings need
        (`SchedulerSettings.checkpoints_needed`).
        """
        if not self.population:
            return keep
        return max(keep, settings.checkpoints_needed()) if capped else None

    @property
    def name(self) -> str:
        """Its `scheduler.type`."""
        return self.settings.model_fields["type"].default
