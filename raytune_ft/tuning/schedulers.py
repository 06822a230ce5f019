"""The scheduler registry: for each `scheduler.type`, its settings class, its builder and
what it can do, like Ray Tune's own `create_scheduler` table.

Every place that depends on the kind of scheduler (the trainable's checkpoint cadence and
dropout seed, checkpoint retention, confirm, replay) asks `scheduler_spec` for a capability
rather than for a class. Builders import Ray when they run, so asking costs no Ray import.

Adding a scheduler: its settings class in `config/_schema.py` (listed in SCHEDULER_CONFIGS,
with `check_against` for checks across the experiment), a builder here and one line in
SCHEDULERS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from raytune_ft.config import (
    AshaConfig,
    ExperimentConfig,
    FifoConfig,
    HyperbandConfig,
    PbtConfig,
)
from raytune_ft.plan import TrialPlan, plan_experiment

TIME_ATTR = "training_iteration"  # one evaluation interval: equal samples for every trial


@dataclass(frozen=True)
class SchedulerSpec:
    """One registered scheduler: settings class, builder and capabilities."""

    config: type  # its settings class in config/_schedulers.py
    build: Callable[[Any, TrialPlan], Any]  # (settings, plan) -> a Ray Tune TrialScheduler
    # Trials exchange weights: a clone takes a donor's checkpoint, config and seed, and is
    # ranked by its last result (the final population), not its best.
    population: bool = False
    # Write a checkpoint at every iteration (run.checkpoint_every is ignored): an exploit
    # clones the donor's checkpoint of its last perturbation point.
    checkpoint_every_iteration: bool = False
    # Ray may pause a trial and resume it later (from its last checkpoint).
    pauses_trials: bool = False
    # A diverged trial keeps reporting its worst values at every evaluation point instead
    # of ending, so the scheduler can replace it with a clone of a healthy trial.
    keeps_diverged: bool = False


def _fifo(cfg: FifoConfig, plan: TrialPlan):
    from ray.tune.schedulers import FIFOScheduler

    return FIFOScheduler()


def _asha(cfg: AshaConfig, plan: TrialPlan):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(time_attr=TIME_ATTR, max_t=plan.iterations,
                         grace_period=cfg.grace_period,
                         reduction_factor=cfg.reduction_factor, brackets=cfg.brackets)


def _hyperband(cfg: HyperbandConfig, plan: TrialPlan):
    from ray.tune.schedulers import HyperBandScheduler

    return HyperBandScheduler(time_attr=TIME_ATTR, max_t=plan.iterations,
                              reduction_factor=cfg.reduction_factor)


def _population_settings(cfg: PbtConfig, plan: TrialPlan) -> dict:
    """What PBT and PB2 share: exploit timing, explore steps kept inside the domains, and
    the rescue of diverged members (tuning/population.py)."""
    from raytune_ft.tuning.search import StayInDomain, mutation_ranges

    return dict(time_attr=TIME_ATTR, perturbation_interval=cfg.perturbation_interval,
                quantile_fraction=cfg.quantile_fraction, synch=cfg.synch,
                custom_explore_fn=StayInDomain(mutation_ranges(plan.space, cfg.mutations)),
                max_t=plan.iterations)  # a diverged member clones a checkpoint before it


def _pbt(cfg: PbtConfig, plan: TrialPlan):
    from raytune_ft.tuning.population import RescuePBT
    from raytune_ft.tuning.search import to_tune

    common, space = _population_settings(cfg, plan), plan.space
    # A choice list moves to a neighbouring value; a distribution is scaled by the
    # perturbation factors (log-scale steps) or resampled.
    mutations = {key: list(space[key].args) if space[key].kind in ("choice", "grid")
                 else to_tune(space[key]) for key in cfg.mutations}
    return RescuePBT(
        hyperparam_mutations=mutations, resample_probability=cfg.resample_probability,
        burn_in_period=cfg.burn_in_period,
        perturbation_factors=tuple(cfg.perturbation_factors), **common)


def _pb2(cfg: PbtConfig, plan: TrialPlan):
    from raytune_ft.tuning.search import LogScalePB2, _bounds

    common = _population_settings(cfg, plan)
    return LogScalePB2(hyperparam_bounds={key: _bounds(plan.space[key]) for key in cfg.mutations},
                       log_keys=tuple(key for key in cfg.mutations if key in plan.log_scaled),
                       **common)


_POPULATION = dict(population=True, checkpoint_every_iteration=True, pauses_trials=True,
                   keeps_diverged=True)
SCHEDULERS: dict[str, SchedulerSpec] = {
    "fifo": SchedulerSpec(FifoConfig, _fifo),
    "asha": SchedulerSpec(AshaConfig, _asha),
    "hyperband": SchedulerSpec(HyperbandConfig, _hyperband, pauses_trials=True),
    "pbt": SchedulerSpec(PbtConfig, _pbt, **_POPULATION),
    "pb2": SchedulerSpec(PbtConfig, _pb2, **_POPULATION),
}


def scheduler_spec(scheduler: Any) -> SchedulerSpec:
    """The registry entry of a scheduler: its settings (`config.scheduler`), an experiment,
    or a `scheduler.type` name."""
    if isinstance(scheduler, ExperimentConfig):
        scheduler = scheduler.scheduler
    kind = scheduler if isinstance(scheduler, str) else scheduler.type
    spec = SCHEDULERS.get(kind)
    if spec is None:
        raise ValueError(f"scheduler.type: {kind!r} has no registered builder; registered: "
                         f"{', '.join(SCHEDULERS)}")
    return spec


def build_scheduler(config: ExperimentConfig, plan: TrialPlan | None = None):
    """A Ray Tune scheduler whose time unit is one evaluation interval (equal samples).

    `plan`: the experiment's; without one (tests, benchmarks) it is computed from `config`.
    """
    plan = plan_experiment(config) if plan is None else plan
    return scheduler_spec(config.scheduler).build(config.scheduler, plan)

