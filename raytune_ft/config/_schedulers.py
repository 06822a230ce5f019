"""Every scheduler's settings (`scheduler:`), checked against the rest of the experiment.

What a scheduler can do (population-based, pauses trials, ...) and how it is built are in
the registry, `raytune_ft.tuning.schedulers`; a new scheduler adds its settings class to
`SCHEDULER_CONFIGS` here and its entry there.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union, get_args

from pydantic import Field, field_validator

from raytune_ft.config._base import _Strict
from raytune_ft.config._space import Domain

# Changing these restructures the optimizer: a PBT clone could not load its donor's state.
FIXED_IN_A_TRIAL = ("freeze_embeddings", "freeze_layers")
# The adapters are built with these: a PBT clone loads its donor's adapter weights, whose
# shapes follow rank and targets; alpha scales the donor's B A, so a new alpha would change
# the function the clone continues from (not a hyperparameter moving from here on).
FIXED_ADAPTER = ("lora_r", "lora_alpha", "lora_targets")
# The model a trial trains and the length its data was tokenized to (and any searched
# `data.` key, which decides the encoding too): a clone continues its donor's weights, so a
# mutated model (or tokenization) is meaningless.
FIXED_MODEL = ("model.name", "model.max_length")
# The current epoch's sample order is built from this; a change mid-epoch would reorder it.
FIXED_IN_AN_EPOCH = ("length_group_window",)


class _SchedulerSettings(_Strict):
    """A scheduler's settings. What the scheduler can do (population-based, pauses trials,
    ...) and how it is built are in the registry, `raytune_ft.tuning.schedulers`."""

    def check_against(self, iterations: int, space: dict[str, Domain]) -> None:
        """Checks against the rest of the experiment: the iterations of a full-budget trial
        and the parsed search space. Raise ValueError naming the field."""


class FifoConfig(_SchedulerSettings):
    type: Literal["fifo"]


class AshaConfig(_SchedulerSettings):
    type: Literal["asha"]
    grace_period: int = Field(1, gt=0)  # iterations before the first rung
    reduction_factor: float = Field(2, gt=1)
    brackets: int = Field(1, gt=0)

    def check_against(self, iterations: int, space: dict[str, Domain]) -> None:
        if self.grace_period > iterations:
            raise ValueError(f"scheduler.grace_period: {self.grace_period} iterations is above "
                             f"the budget of {iterations} (train.max_epochs / "
                             "train.eval_every_epochs)")


class HyperbandConfig(_SchedulerSettings):
    type: Literal["hyperband"]
    reduction_factor: float = Field(3, gt=1)


class PbtConfig(_SchedulerSettings):
    type: Literal["pbt", "pb2"]
    perturbation_interval: int = Field(1, gt=0)  # iterations between exploit decisions
    burn_in_period: int = Field(0, ge=0)
    quantile_fraction: float = Field(0.25, gt=0, le=0.5)
    resample_probability: float = Field(0.25, ge=0, le=1)  # PBT only
    perturbation_factors: tuple[float, float] = (1.2, 0.8)  # PBT only
    synch: bool = False
    mutations: list[str]  # search keys PBT/PB2 may change inside a running trial

    @field_validator("mutations")
    @classmethod
    def _not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("PBT needs at least one key in scheduler.mutations")
        return value

    def check_against(self, iterations: int, space: dict[str, Domain]) -> None:
        if self.type == "pb2" and self.burn_in_period:
            raise ValueError("scheduler.burn_in_period: PB2 has no burn-in; allowed only with "
                             "type: pbt")
        if self.perturbation_interval >= iterations:
            raise ValueError(f"scheduler.perturbation_interval: {self.perturbation_interval}"
                             f" iterations is not below the budget of {iterations}; no exploit "
                             "could happen")
        for key in self.mutations:
            _check_mutation(self.type, key, space.get(key), space)


def _check_mutation(kind: str, key: str, domain: Domain | None, space: dict) -> None:
    """A key PBT/PB2 may change inside a running trial."""
    if key in FIXED_IN_A_TRIAL:
        raise ValueError(f"scheduler.mutations: {key!r} cannot change inside a running "
                         "trial (it decides which parameters the optimizer holds)")
    if key in FIXED_ADAPTER:
        raise ValueError(f"scheduler.mutations: {key!r} cannot change inside a running "
                         "trial (a clone loads its donor's LoRA adapters, built with it); "
                         "mutable: learning_rate, batch_size, weight_decay, lora_dropout, ...")
    if key in FIXED_MODEL or key.startswith("data."):
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
    if kind == "pb2" and domain.kind in ("choice", "grid"):
        if not all(isinstance(v, (int, float)) for v in domain.args):
            raise ValueError(f"scheduler.mutations: PB2 needs numeric bounds for "
                             f"search.{key}, got {list(domain.args)!r}")


# Every scheduler's settings class; a new scheduler adds its class here and its entry to
# the registry (`raytune_ft.tuning.schedulers.SCHEDULERS`).
SCHEDULER_CONFIGS = (FifoConfig, AshaConfig, HyperbandConfig, PbtConfig)
# scheduler.type -> its settings class (pbt and pb2 share one)
SCHEDULER_CLASSES = {kind: cls for cls in SCHEDULER_CONFIGS
                     for kind in get_args(cls.model_fields["type"].annotation)}
SCHEDULER_TYPES = tuple(SCHEDULER_CLASSES)
SchedulerConfig = Annotated[Union[SCHEDULER_CONFIGS], Field(discriminator="type")]  # noqa: UP007
