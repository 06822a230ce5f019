"""The base classes of a component's own settings: a task's `data:`, a `scheduler:`, a
tracker's `tracking.<name>:`. Each component's module subclasses one with its own fields and
validators; `raytune_ft.schema` assembles the experiment from the registries, so an unknown
key is checked against that component's fields only."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Union

from pydantic import BaseModel, Discriminator, Field, Tag, model_validator

from raytune_ft.config._base import Strict
from raytune_ft.config._space import Domain


class DataSettings(Strict):
    """What every task's `data:` section has; a task's class sets `kind` to its name (a
    `Literal`) and adds the fields only it reads."""

    kind: str  # the task that reads the data (a registered task's name)
    train_file: str | None = None  # the user's training data (its format is the task's)
    eval_file: str | None = None  # the data every trial is scored on
    max_train_samples: int | None = Field(None, gt=0)  # fixed random subset, seeded below
    max_eval_samples: int | None = Field(None, gt=0)  # fixed random subset of the eval split
    subset_seed: int = Field(0, ge=0)  # the subset is the same for every trial and every run

    # The fields naming local files or folders (a path, or settings of paths: seq2seq's
    # source/target pair); a task reading another one adds it.
    path_fields: ClassVar[tuple[str, ...]] = ("train_file", "eval_file")

    def with_paths(self, change: Callable[[str], str]) -> DataSettings:
        """These settings with each path of `path_fields` passed through `change`: the
        experiment record keeps them absolute, so confirm, resume and export read the same
        files from any working directory."""
        def one(value: Any) -> Any:
            if isinstance(value, str):
                return change(value)
            if isinstance(value, BaseModel):
                return value.model_copy(update={key: one(item) for key, item in value
                                                if isinstance(item, str)})
            return value

        return self.model_copy(update={name: one(getattr(self, name))
                                       for name in self.path_fields
                                       if getattr(self, name) is not None})

    @property
    def source(self) -> str:
        """What the data is called in records and model cards: the training file (a task
        reading named datasets says its dataset's name)."""
        return str(self.train_file)

    def for_final_model(self) -> DataSettings:
        """These settings as confirm runs and export use them (seq2seq: beam search where
        the search generated greedily); by default the search's."""
        return self

    @model_validator(mode="after")
    def _eval_with_train(self) -> DataSettings:
        if self.train_file is not None and self.eval_file is None:
            raise ValueError("data.eval_file is required with data.train_file")
        return self


class SchedulerSettings(Strict):
    """A scheduler's settings; its class sets `type` to its name (a `Literal`)."""

    type: str  # the scheduler (a registered name)

    def check_against(self, iterations: int, space: dict[str, Domain]) -> None:
        """Checks against the rest of the experiment: the iterations of a full-budget trial
        and the parsed search space. Raise ValueError naming the field."""

    def checkpoints_needed(self) -> int:
        """The fewest checkpoints per trial this scheduler works with: a cap the user sets
        (`run.checkpoints_to_keep`) under a population-based scheduler is raised to it, so
        the checkpoint a clone takes is still there. Default: the newest one."""
        return 1


class TrackerSettings(Strict):
    """A tracker's settings (`tracking.<name>: {...}`); `true` switches a tracker on with
    its defaults, `false` or nothing leaves it off."""

    @classmethod
    def switch(cls, value: Any) -> Any:
        """`true` -> the defaults, `false` -> off (None); a mapping is the settings."""
        if value is True:
            return {}
        return None if value is False else value


class ComponentKind:
    """Which component a section is for: its `field` (`type`, `kind`), or `default(section)`
    where the field is left out. The discriminator of `component_union`; `noun` names the
    components in errors ("'asha2' is not a scheduler")."""

    def __init__(self, field: str, noun: str,
                 default: Callable[[dict], str | None] | None = None) -> None:
        self.field, self.noun, self.default = field, noun, default
        self.__name__ = f"{noun}_{field}"  # pydantic names the discriminator in its errors

    def __call__(self, value: Any) -> str | None:
        if isinstance(value, dict):
            if value.get(self.field) is not None:
                return value[self.field]
            return self.default(value) if self.default is not None else None
        return getattr(value, self.field, None)


def component_union(classes: dict[str, type], kind: ComponentKind) -> Any:
    """The discriminated union of the settings `classes` (name -> class, registry order):
    a section validates against the one class its kind names, so an unknown key is checked
    against that component's fields only."""
    members = tuple(Annotated[cls, Tag(name)] for name, cls in classes.items())
    return Annotated[Union[members], Discriminator(kind)]  # noqa: UP007
