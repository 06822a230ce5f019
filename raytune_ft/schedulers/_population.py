"""What PBT and PB2 share: their settings, the keys a running trial cannot change, and the
explore step that keeps every mutated value inside its searched domain.

Ray's PBT multiplies a value by its perturbation factors without clipping, and PB2 fits its
model on linear bounds, so an explore step here is followed by `StayInDomain`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import Field, field_validator

from raytune_ft.config import DATA_SEARCH_PREFIX, INTEGER_FIELDS, Domain, SchedulerSettings
from raytune_ft.plan import TrialPlan
from raytune_ft.schedulers._base import TIME_ATTR

# Changing these restructures the optimizer: a PBT clone could not load its donor's state.
FIXED_IN_A_TRIAL = ("freeze_embeddings", "freeze_layers")
# The adapters are built with these: a PBT clone loads its donor's adapter weights, whose
# shapes follow rank and targets; alpha scales the donor's B A, so a new alpha would change
# the function the clone continues from (not a hyperparameter moving from here on).
FIXED_ADAPTER = ("lora_r", "lora_alpha", "lora_targets")
# The model a trial trains and the length its data was tokenized to (and any searched `data.`
# key, which decides the encoding too): a clone continues its donor's weights, so a mutated
# model (or tokenization) is meaningless.
FIXED_MODEL = ("model.name", "model.max_length")
# The current epoch's sample order is built from this; a change mid-epoch would reorder it.
FIXED_IN_AN_EPOCH = ("length_group_window",)


class PopulationSettings(SchedulerSettings):
    """The settings PBT and PB2 share (each module adds its own `type` and fields)."""

    perturbation_interval: int = Field(1, gt=0)  # iterations between exploit decisions
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)  # bottom share cloned from the top
    synch: bool = False  # exploit once every member reached the interval (slower, exact)
    mutations: list[str]  # search keys PBT/PB2 may change inside a running trial

    @field_validator("mutations")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("PBT needs at least one key in scheduler.mutations")
        return value

    def check_against(self, iterations: int, space: dict[str, Domain]) -> None:
        if self.perturbation_interval >= iterations:
            raise ValueError(f"scheduler.perturbation_interval: {self.perturbation_interval}"
                             f" iterations is not below the budget of {iterations}; no exploit "
                             "could happen")
        for key in self.mutations:
            self.check_mutation(key, space)

    def checkpoints_needed(self) -> int:
        # A donor's checkpoint of its last perturbation point can be several iterations
        # behind its newest one: two intervals cover it.
        return 2 * self.perturbation_interval + 2

    def check_mutation(self, key: str, space: dict[str, Domain]) -> None:
        """A key this scheduler may change inside a running trial."""
        domain = space.get(key)
        if key in FIXED_IN_A_TRIAL:
            raise ValueError(f"scheduler.mutations: {key!r} cannot change inside a running "
                             "trial (it decides which parameters the optimizer holds)")
        if key in FIXED_ADAPTER:
            raise ValueError(f"scheduler.mutations: {key!r} cannot change inside a running "
                             "trial (a clone loads its donor's LoRA adapters, built with it); "
                             "mutable: learning_rate, batch_size, weight_decay, lora_dropout, ...")
        if key in FIXED_MODEL or key.startswith(DATA_SEARCH_PREFIX):
            raise ValueError(f"scheduler.mutations: {key!r} cannot change inside a running "
                             "trial (a clone continues its donor's weights, trained with the "
                             "donor's model and tokenization); search it, but do not mutate it")
        if key in FIXED_IN_AN_EPOCH:
            raise ValueError(f"scheduler.mutations: {key!r} cannot change inside a running "
                             "trial (it orders the samples of the current epoch)")
        if domain is None:
            raise ValueError(f"scheduler.mutations: {key!r} is not in search (searched: "
                             f"{', '.join(space) or 'nothing'})")
        if domain.kind == "constant":
            raise ValueError(f"scheduler.mutations: search.{key} is a constant; give it a "
                             "distribution or a choice list")
        if domain.kind in ("choice", "grid") and len(domain.args) < 2:
            raise ValueError(f"scheduler.mutations: search.{key} has one value; PBT needs "
                             "at least two to move between")


def population_settings(settings: PopulationSettings, plan: TrialPlan) -> dict:
    """The keyword arguments PBT and PB2 share: exploit timing, explore steps kept inside
    the domains, and the rescue of diverged members (`_rescue`)."""
    return dict(time_attr=TIME_ATTR, perturbation_interval=settings.perturbation_interval,
                quantile_fraction=settings.quantile_fraction, synch=settings.synch,
                custom_explore_fn=StayInDomain(mutation_ranges(plan.space, settings.mutations)),
                max_t=plan.iterations)  # a diverged member clones a checkpoint before it


def to_tune(domain: Domain) -> Any:
    """Our YAML distribution syntax as a Ray Tune domain."""
    from ray import tune

    kind, args = domain.kind, domain.args
    if kind == "constant":
        return args[0]
    if kind == "grid":
        return tune.grid_search(list(args))
    if kind == "choice":
        return tune.choice(list(args))
    if kind == "randint":
        return tune.randint(args[0], args[1] + 1)  # YAML bounds are inclusive
    factories = {"loguniform": tune.loguniform, "uniform": tune.uniform,
                 "quniform": tune.quniform, "qloguniform": tune.qloguniform}
    return factories[kind](*args)


def bounds(domain: Domain) -> list[float]:
    """A numeric domain's [low, high]; PB2 treats a numeric choice list as that range."""
    if domain.kind in ("choice", "grid"):
        return [min(domain.args), max(domain.args)]
    return [domain.args[0], domain.args[1]]


@dataclass(frozen=True)
class Range:
    """Where an explored value must land: [low, high], on integers, on multiples of q, or
    on the values of a numeric choice list."""

    low: float
    high: float
    integer: bool = False
    q: float | None = None
    values: tuple[float, ...] = ()

    def clip(self, value: float) -> float | int:
        """The nearest allowed value (unchanged when it is already allowed)."""
        if self.values:  # ties go to the smaller value
            return min(sorted(self.values), key=lambda v: abs(v - value))
        if self.integer:
            return min(max(int(round(value)), math.ceil(self.low)), math.floor(self.high))
        if self.q is not None:  # the ends are multiples of q (parse_domain checks)
            value = round(value / self.q) * self.q
        return min(max(value, self.low), self.high)


def mutation_ranges(space: dict[str, Domain], keys: list[str]) -> dict[str, Range]:
    """The range each numeric mutated key must stay in; integer settings stay integers.

    A numeric choice list keeps its values: PBT moves within the list anyway, and PB2's
    proposal in [min, max] goes to the nearest listed value (batch sizes [8, 16, 32] never
    give 23). A list of names has no range: PBT only ever picks from it.
    """
    ranges = {}
    for key in keys:
        domain = space[key]
        values = ()
        if domain.kind in ("choice", "grid"):
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       for v in domain.args):
                continue
            values = tuple(domain.args)
        q = domain.args[2] if domain.kind in ("quniform", "qloguniform") else None
        low, high = bounds(domain)
        ranges[key] = Range(low, high, integer=key in INTEGER_FIELDS, q=q, values=values)
    return ranges


class StayInDomain:
    """PBT and PB2's `custom_explore_fn`: every explored value back inside its range.

    PBT's 0.9 x 1.2 = 1.08 would otherwise leave `layer_decay: uniform [0.75, 1.0]`, fail the
    trial's validation and retry with the same config; PB2 proposes float32 values and
    truncates integers. A module-level class, so the scheduler pickles with Tune's state.
    """

    def __init__(self, ranges: dict[str, Range]) -> None:
        self.ranges = dict(ranges)

    def __call__(self, config: dict) -> dict:
        clipped = {key: limits.clip(config[key]) for key, limits in self.ranges.items()
                   if key in config}
        return {**config, **clipped}
