"""Load an experiment: YAML, `--set a.b=c` overrides, and validation with one-line errors
naming the dotted path."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from raytune_ft import schedulers, tasks
from raytune_ft.config import apply_override, one_line, read_yaml
from raytune_ft.errors import ConfigError
from raytune_ft.schema._experiment import ExperimentConfig


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
    the shared section wrote, not the user's, and are dropped."""
    settings = dict(settings)
    sections = (("data", tasks.TASKS, "kind", lambda task: task.settings, tasks.kind_of),
                ("scheduler", schedulers.SCHEDULERS, "type", lambda spec: spec.settings,
                 lambda section: section.get("type")))
    for key, registry, tag, settings_of, kind_of in sections:
        section = settings.get(key)
        if isinstance(section, dict):
            settings[key] = _own_fields(section, registry, tag, settings_of, kind_of)
    return validate_config(settings, source)


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
