"""One trial's settings: the fixed ones with what the search sampled on top (train settings,
a searched model name or max length, searched data settings of the encoding), and what a
search over models lists."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from raytune_ft.config import (
    DATA_SEARCH_PREFIX,
    INTEGER_FIELDS,
    MODEL_SEARCH_KEYS,
    DataSettings,
    ModelConfig,
    TrainConfig,
    one_line,
)
from raytune_ft.errors import ConfigError
from raytune_ft.schema._data_search import data_keys
from raytune_ft.schema._experiment import ExperimentConfig


def trial_hyperparameters(config: ExperimentConfig, sampled: dict[str, Any]) -> TrainConfig:
    """The train settings of one trial: fixed settings with the sampled values on top.

    An integer setting that arrives as a float (a PB2 proposal recorded before the explore
    step rounded them) is rounded, not rejected; `int | None` settings included.
    """
    values = config.train.model_dump()
    for key, value in sampled.items():
        if key not in TrainConfig.model_fields:
            continue
        if key in INTEGER_FIELDS and isinstance(value, float):
            value = int(round(value))
        values[key] = value
    schedule = values.get("batch_schedule")
    if schedule == "none":
        values["batch_schedule"] = None
    elif isinstance(schedule, str):
        values["batch_schedule"] = config.batch_schedules[schedule]
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as error:
        raise ConfigError(f"trial config {sampled}: {one_line(error, TrainConfig)}") from None


def trial_model(config: ExperimentConfig, sampled: dict[str, Any]) -> ModelConfig:
    """The model settings of one trial: `model:` with a searched `model.name` and
    `model.max_length` (dotted keys of the trial's config) on top. The one place a trial's
    model is decided: the trainable, confirm, replay and export all ask here."""
    update = {key.removeprefix("model."): sampled[key] for key in MODEL_SEARCH_KEYS
              if key in sampled}
    return _searched_on_top(config.model, "model", update, sampled)


def trial_data(config: ExperimentConfig, sampled: dict[str, Any]) -> DataSettings:
    """The data settings of one trial: `data:` with the searched `data.` keys (those the
    task's encoding depends on, e.g. data.doc_stride) on top; the twin of `trial_model`."""
    update = {key.removeprefix(DATA_SEARCH_PREFIX): sampled[key] for key in data_keys(sampled)}
    return _searched_on_top(config.data, "data", update, sampled)


def _searched_on_top(section: Any, name: str, update: dict[str, Any],
                     sampled: dict[str, Any]) -> Any:
    """The `name:` section with a trial's searched values `update` on top, validated as its
    own settings class; the section itself where nothing of it is searched."""
    if not update:
        return section
    settings = type(section)
    try:
        return settings.model_validate({**section.model_dump(), **update})
    except ValidationError as error:
        raise ConfigError(f"trial config {sampled}: {name}.{one_line(error, settings)}"
                          ) from None


def tokenization_keys(config: ExperimentConfig) -> list[str]:
    """The searched keys that decide a trial's model or encoding: model.name,
    model.max_length and the task's `data.` keys."""
    return [key for key in config.search
            if key in MODEL_SEARCH_KEYS or key.startswith(DATA_SEARCH_PREFIX)]


def searches_model(config: ExperimentConfig) -> bool:
    """Whether trials may differ in model or tokenization (a model or data key under
    `search:`)."""
    return bool(tokenization_keys(config))


def model_options(config: ExperimentConfig) -> tuple[list[str], list[int]]:
    """Every model name and every max_length a trial can use, in the order written."""
    space = config.space()

    def values(key: str) -> list:
        fixed = getattr(config.model, key.removeprefix("model."))
        return list(dict.fromkeys(space[key].values)) if key in space else [fixed]

    return values("model.name"), values("model.max_length")


def narrow_model_search(config: ExperimentConfig, configs: list[dict[str, Any]]
                        ) -> ExperimentConfig:
    """`config` whose searched model and data keys list only the values `configs` (trial
    configs to run again: confirm, replay) use, so `runner.prepare` tokenizes only what they
    need. The fixed model.name becomes the first of them when it is not among them (the
    schema's rule, checked again when the run's record is read)."""
    search, model = dict(config.search), config.model
    for key in tokenization_keys(config):
        if key in search:
            used = list(dict.fromkeys(c[key] for c in configs if key in c))
            search[key] = {"choice": used} if len(used) > 1 else used[0] if used else \
                search[key]
            if key == "model.name" and used and model.name not in used:
                model = model.model_copy(update={"name": used[0]})
    return config.model_copy(update={"search": search, "model": model})
