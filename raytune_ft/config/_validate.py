"""Load an experiment: YAML, `--set a.b=c` overrides, validation with one-line errors
naming the dotted path, and the validated train settings of one trial."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from raytune_ft.config._schedulers import SCHEDULER_CLASSES, SCHEDULER_TYPES
from raytune_ft.config._schema import (
    DATA_SEARCH_PREFIX,
    INTEGER_FIELDS,
    MODEL_SEARCH_KEYS,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    TrainConfig,
)
from raytune_ft.config._space import did_you_mean
from raytune_ft.errors import ConfigError


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML, apply `a.b=c` overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: experiment file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path}:{where}: YAML syntax error: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got "
                          f"{type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    try:
        return validate_config(raw, source=str(path))
    except ConfigError as error:
        # Name the override when the bad value came from the command line, not the file.
        message = str(error)[len(str(path)) + 2:]
        for override in overrides:
            key = override.partition("=")[0].strip()
            if message.startswith((f"{key}:", f"{key}.")):
                raise ConfigError(f"{error} (from --set {override})") from None
        raise


def apply_override(raw: dict, override: str) -> None:
    """Set `a.b.c=value` in a nested dict; the value is parsed as YAML (no eval)."""
    key, sep, text = override.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key.strip()):
        raise ConfigError(f"--set {override!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        raise ConfigError(f"--set {override!r}: value is not valid YAML") from None
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def validate_config(raw: dict, source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: {_first_error(error)}") from None


def _first_error(error: ValidationError) -> str:
    detail = error.errors()[0]
    loc = [str(p) for p in detail["loc"] if not str(p).startswith(("function-", "tagged-"))]
    # Discriminated unions add the tag as a path element: scheduler.asha.grace_period.
    tag = None
    if len(loc) >= 2 and loc[0] == "scheduler" and loc[1] in SCHEDULER_TYPES:
        tag = loc.pop(1)
    path = ".".join(loc)
    kind, message, value = detail["type"], detail["msg"], detail.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1], tag)
        hint = did_you_mean(loc[-1], parent.model_fields) if parent else ""
        allowed = f"; allowed: {', '.join(parent.model_fields)}" if parent else ""
        return f"{path}: unknown key{hint}{allowed}"
    if kind == "missing":
        return f"{path}: required field is missing{_allowed(loc, tag)}"
    if kind == "union_tag_invalid":
        given = value.get("type")
        return f"{path}.type: {given!r} is not a scheduler" \
               f"{did_you_mean(given, SCHEDULER_TYPES)}; allowed: {', '.join(SCHEDULER_TYPES)}"
    if kind == "union_tag_not_found":
        return f"{path}.type: required; allowed: {', '.join(SCHEDULER_TYPES)}"
    if kind == "literal_error" and isinstance(value, str):
        allowed = re.findall(r"'([^']*)'", str(detail.get("ctx", {}).get("expected", "")))
        return f"{path}: {message} (got {value!r}){did_you_mean(value, allowed)}"
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
        first = message.split()[0]
        names_its_field = "." in first or first.endswith(":")
        return message if names_its_field or not path else f"{path}: {message}"
    shown = "" if isinstance(value, (dict, list)) else f" (got {value!r})"
    return f"{path}: {message}{shown}" if path else f"{message}{shown}"


def _allowed(loc: list[str], tag: str | None) -> str:
    """"; allowed: max, min" for a field that takes one of fixed values, else ""."""
    parent = _model_at(loc[:-1], tag) if loc else None
    field = parent.model_fields.get(loc[-1]) if parent is not None else None
    annotation = getattr(field, "annotation", None)
    if get_origin(annotation) is not Literal:
        return ""
    return f"; allowed: {', '.join(str(a) for a in get_args(annotation))}"


def _model_at(loc: list[str], scheduler_type: str | None = None) -> type[BaseModel] | None:
    model: type[BaseModel] = ExperimentConfig
    for part in loc:
        if part.isdigit():  # an item of a list of models (objectives.0): the item's model
            continue
        if part == "scheduler":
            return SCHEDULER_CLASSES.get(scheduler_type) if part == loc[-1] else None
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        # An optional section (`MlflowConfig | None`): its model
        annotation = next((a for a in get_args(annotation) if isinstance(a, type)
                           and issubclass(a, BaseModel)), annotation)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


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
        raise ConfigError(f"trial config {sampled}: {_first_error(error)}") from None


def trial_model(config: ExperimentConfig, sampled: dict[str, Any]) -> ModelConfig:
    """The model settings of one trial: `model:` with a searched `model.name` and
    `model.max_length` (dotted keys of the trial's config) on top. The one place a trial's
    model is decided: the trainable, confirm, replay and export all ask here."""
    update = {key.removeprefix("model."): sampled[key] for key in MODEL_SEARCH_KEYS
              if key in sampled}
    if not update:
        return config.model
    try:
        return ModelConfig.model_validate({**config.model.model_dump(), **update})
    except ValidationError as error:
        raise ConfigError(f"trial config {sampled}: model.{_first_error(error)}") from None


def trial_data(config: ExperimentConfig, sampled: dict[str, Any]) -> DataConfig:
    """The data settings of one trial: `data:` with the searched `data.` keys (those the
    task's encoding depends on, e.g. data.doc_stride) on top; the twin of `trial_model`."""
    update = {key.removeprefix(DATA_SEARCH_PREFIX): value for key, value in sampled.items()
              if key.startswith(DATA_SEARCH_PREFIX)}
    if not update:
        return config.data
    try:
        return DataConfig.model_validate({**config.data.model_dump(), **update})
    except ValidationError as error:
        raise ConfigError(f"trial config {sampled}: data.{_first_error(error)}") from None


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
