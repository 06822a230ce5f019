"""Load an experiment: YAML, `--set a.b=c` overrides, and validation with one-line errors
naming the dotted path."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

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
