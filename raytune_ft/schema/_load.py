"""Load an experiment: YAML, `--set a.b=c` overrides, and validation with one-line errors
naming the dotted path."""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import ValidationError

from raytune_ft import schedulers, tasks
from raytune_ft.config import apply_override, one_line, read_yaml
from raytune_ft.errors import ConfigError
from raytune_ft.schema._experiment import ExperimentConfig

logger = logging.getLogger(__name__)


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    """Read an experiment YAML, apply `a.b=c` overrides and validate it."""
    raw = read_yaml(path)
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


def validate_config(raw: dict, source: str = "config") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(f"{source}: {one_line(error, ExperimentConfig)}") from None


def validate_record(settings: dict, source: str) -> ExperimentConfig:
    """An experiment record's settings (`raytune_ft.json`), validated as an experiment file
    is. A record written before each component owned its settings held one shared `data:`
    and PBT/PB2 section with every component's fields at their defaults: those fields, where
    the chosen component has none and the value is another component's default, are what
    the shared section wrote, not the user's, and are dropped. The shared PBT/PB2 section
    took PBT's fields for PB2 too, which ignored them: in such a record they are dropped
    whatever their value, with a warning (`_unread_population_fields`)."""
    settings = dict(settings)
    before_the_split = _before_the_split(settings.get("data"))
    sections = (("data", tasks.TASKS, "kind", lambda task: task.settings, tasks.kind_of),
                ("scheduler", schedulers.SCHEDULERS, "type", lambda spec: spec.settings,
                 lambda section: section.get("type")))
    for key, registry, tag, settings_of, kind_of in sections:
        section = settings.get(key)
        if isinstance(section, dict):
            settings[key] = _own_fields(section, registry, tag, settings_of, kind_of)
    if before_the_split and isinstance(settings.get("scheduler"), dict):
        settings["scheduler"] = _unread_population_fields(settings["scheduler"], source)
    return validate_config(settings, source)


def _before_the_split(data) -> bool:
    """Whether a record was written before each component owned its settings: its `data:`
    section then held every task's fields (one shared class), now only its own task's."""
    if not isinstance(data, dict):
        return False
    task = tasks.TASKS.get(tasks.kind_of({k: v for k, v in data.items()
                                          if not (k == "kind" and v is None)}))
    return task is not None and not set(data) <= set(task.settings.model_fields)


def _unread_population_fields(section: dict, source: str) -> dict:
    """A population scheduler's section without the fields of its family (PBT, PB2) it does
    not read: the old shared section let PB2 take `resample_probability`,
    `perturbation_factors` and `burn_in_period` and ignored them, so the experiment ran
    without them; dropped with one warning naming them."""
    chosen = schedulers.SCHEDULERS.get(section.get("type"))
    if chosen is None or not chosen.population:
        return section
    family = {name for spec in schedulers.SCHEDULERS.values() if spec.population
              for name in spec.settings.model_fields}
    unread = [k for k in section if k in family and k not in chosen.settings.model_fields]
    if unread:
        named = ", ".join(f"scheduler.{k}={section[k]!r}" for k in unread)
        logger.warning("%s: %s ignored: scheduler.type %s does not read it (a record written "
                       "before each scheduler had its own settings; its run ignored it too)",
                       source, named, section["type"])
    return {k: v for k, v in section.items() if k not in unread}


def _own_fields(section: dict, registry: dict, tag: str, settings_of, kind_of) -> dict:
    section = {k: v for k, v in section.items() if not (k == tag and v is None)}
    chosen = registry.get(kind_of(section))
    if chosen is None:
        return section
    own = settings_of(chosen).model_fields
    defaults = {name: field.default for entry in registry.values()
                for name, field in settings_of(entry).model_fields.items()}
    return {k: v for k, v in section.items()
            if k in own or k not in defaults or not _same(v, defaults[k])}


def _same(value, default) -> bool:
    """A JSON value equal to a field's default (tuples read back as lists)."""
    if isinstance(default, tuple):
        default = list(default)
    return value == default
