"""The trial plan: what every trial of an experiment shares, computed once.

Built from the validated experiment (and, once the data is read, the training-set size):
the parsed search space, the iterations of a full-budget trial, every effective batch a
trial can take with its gradient accumulation, and the budget in training samples with its
evaluation points (DESIGN.md, contracts). The runner saves it in the experiment record; the
loop, the run header, the schedulers, confirm and analysis read it and compute none of it.

Pure: no torch, no Ray. Frozen, so a trial cannot change what the scheduler relies on.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from raytune_ft.config import (
    LOG_SCALED,
    BatchPhases,
    Domain,
    TrainConfig,
    evaluation_count,
    per_experiment_settings,
)


def accumulation_steps(batch_size: int, max_micro_batch: int) -> int:
    """Micro-batches per optimizer step: ceil(batch_size / max_micro_batch)."""
    return math.ceil(batch_size / max_micro_batch)


@dataclass(frozen=True)
class Budget:
    """A trial's budget and evaluation points, in training samples.

    Evaluation k (1-based) happens at round(k x eval_every_epochs x n_train) samples, the
    last at the whole budget round(max_epochs x n_train).
    """

    n_train: int  # training samples (one epoch)
    total_samples: int  # the budget
    evaluation_points: tuple[int, ...]  # samples seen at evaluation 1, 2, ..., the last

    @property
    def iterations(self) -> int:
        return len(self.evaluation_points)

    def evaluation_point(self, k: int) -> int:
        """Samples seen at evaluation k (1-based); the budget from the last one on."""
        return self.evaluation_points[min(k, self.iterations) - 1]

    def evaluations_done(self, samples_seen: int) -> int:
        """Evaluation points passed at `samples_seen`: the Tune iteration it belongs to."""
        return bisect.bisect_right(self.evaluation_points, samples_seen)

    def next_point(self, samples_seen: int) -> int:
        """The first evaluation point after `samples_seen` (the interval's target)."""
        return self.evaluation_points[self.evaluations_done(samples_seen)]


def trial_budget(max_epochs: float, eval_every_epochs: float, n_train: int) -> Budget:
    """The budget of a trial of `max_epochs` over `n_train` samples, evaluated every
    `eval_every_epochs`: the budget split evenly, the rest in the last interval."""
    total = round(max_epochs * n_train)
    count = evaluation_count(max_epochs, eval_every_epochs)
    points = tuple(total if k >= count else min(total, round(k * eval_every_epochs * n_train))
                   for k in range(1, count + 1))
    return Budget(n_train, total, points)


@dataclass(frozen=True)
class BatchSpan:
    """Effective batch sizes low..high (equal for one size) and their accumulation."""

    low: int
    high: int
    start: float | None  # progress from which a batch-schedule phase applies; None: always
    accumulation: tuple[int, int]  # fewest and most micro-batches per optimizer step


@dataclass(frozen=True)
class BatchOption:
    """One way a trial's effective batch is set: plain sizes, or a batch schedule."""

    phased: bool  # a batch schedule (sizes by progress), not plain sizes
    schedule: str | None  # the name in batch_schedules; None: none, or phases given inline
    spans: tuple[BatchSpan, ...]


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of one experiment shares. `budget` is None until the data is read
    (validation, a scheduler built from the config alone). A search over the encoding can
    give training splits of several sizes (question answering: more windows at a shorter
    max_length): `budget` is the first one's and `other_budgets` the others' (`budget_for`);
    all have the same epochs and evaluation count, so schedulers compare trials at equal
    iterations."""

    max_epochs: float  # as every trial trains with it (train, or a constant under search:)
    eval_every_epochs: float
    iterations: int  # Tune iterations of a full-budget trial: the schedulers' max_t
    space: dict[str, Domain]  # the parsed search space (read only)
    log_scaled: tuple[str, ...]  # searched keys drawn on a log scale
    micro_batch: tuple[int, int]  # fewest and most samples on the device at once
    batches: tuple[BatchOption, ...]
    budget: Budget | None = field(default=None)
    other_budgets: tuple[Budget, ...] = ()  # training splits of other sizes (see above)

    @property
    def largest_batch(self) -> int:
        return max(span.high for option in self.batches for span in option.spans)

    def budget_for(self, n_train: int) -> Budget:
        """The budget of a trial whose training split has `n_train` samples."""
        for budget in (self.budget, *self.other_budgets):
            if budget is not None and budget.n_train == n_train:
                return budget
        known = [b.n_train for b in (self.budget, *self.other_budgets) if b is not None]
        raise ValueError(f"the plan has no budget for {n_train} training samples "
                         f"(planned: {known})")

    def record(self) -> dict[str, Any]:
        """The plan as JSON values, for the experiment record (raytune_ft.json); without
        other budgets it reads as before they existed (resume compares records)."""
        record = asdict(self)
        record["space"] = {key: domain.model_dump(mode="json")
                           for key, domain in self.space.items()}
        if not self.other_budgets:
            del record["other_budgets"]
        return record


def plan_experiment(train: TrainConfig, space: dict[str, Domain],
                    batch_schedules: dict[str, BatchPhases],
                    n_train: int | list[int] | None = None) -> TrialPlan:
    """The plan of a validated experiment (its `train:`, parsed `search:` and
    `batch_schedules:`; `ExperimentConfig.plan` passes them); with `n_train` (the training
    split's size, or the sizes of every tokenization a trial can take, the first one's
    first) it holds the budgets and evaluation points too."""
    max_epochs, every = per_experiment_settings(train, space)
    micro = [v for span in _int_spans(space.get("max_micro_batch"),
                                      train.max_micro_batch) for v in span]
    micro_batch = (min(micro), max(micro))
    sizes = [] if n_train is None else list(dict.fromkeys(
        [n_train] if isinstance(n_train, int) else n_train))
    budgets = tuple(trial_budget(max_epochs, every, n) for n in sizes)
    return TrialPlan(
        max_epochs=max_epochs, eval_every_epochs=every,
        iterations=evaluation_count(max_epochs, every),
        space=space,
        log_scaled=tuple(key for key, domain in space.items() if domain.kind in LOG_SCALED),
        micro_batch=micro_batch,
        batches=_batch_options(train, space, batch_schedules, micro_batch),
        budget=budgets[0] if budgets else None,
        other_budgets=budgets[1:],
    )


def _int_spans(domain: Domain | None, fixed: int) -> list[tuple[int, int]]:
    """The integers a train setting can take: each value of a choice, or a range's ends."""
    if domain is None:
        return [(fixed, fixed)]
    if domain.kind in ("constant", "choice", "grid"):
        return [(v, v) for v in sorted({int(v) for v in domain.args})]
    return [(math.ceil(domain.args[0]), math.floor(domain.args[1]))]  # randint is inclusive


def _batch_options(train: TrainConfig, space: dict[str, Domain],
                   batch_schedules: dict[str, BatchPhases], micro_batch: tuple[int, int]
                   ) -> tuple[BatchOption, ...]:
    """Each way a trial's effective batch is set, every size with its accumulation: the
    fewest micro-batches at the largest micro-batch, the most at the smallest."""
    smallest, largest = micro_batch

    def span(low: int, high: int, start: float | None) -> BatchSpan:
        return BatchSpan(low, high, start, (accumulation_steps(low, largest),
                                            accumulation_steps(high, smallest)))

    schedules = (space["batch_schedule"].args if "batch_schedule" in space
                 else [train.batch_schedule])
    options = []
    for schedule in schedules:
        if schedule in (None, "none"):
            sizes = _int_spans(space.get("batch_size"), train.batch_size)
            options.append(BatchOption(False, None, tuple(span(low, high, None)
                                                          for low, high in sizes)))
        else:
            phases = batch_schedules[schedule] if isinstance(schedule, str) else schedule
            options.append(BatchOption(True, schedule if isinstance(schedule, str) else None,
                                       tuple(span(size, size, start) for start, size in phases)))
    return tuple(options)
