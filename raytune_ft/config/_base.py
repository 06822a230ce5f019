"""The base of every settings model (unknown keys are errors, values are immutable), and the
one way a registry of components is read."""

from __future__ import annotations

import importlib
from typing import Any

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def load_entries(package: str, attribute: str, names: tuple[str, ...]) -> dict[str, Any]:
    """name -> `<package>.<name>.<attribute>` for every module named, in order: a registry
    of components (tasks, schedulers, trackers), each entry one module of its package.

    The entry modules import nothing heavy at their top (torch, Ray, a tracker's client are
    imported where they are used), so reading a registry is cheap."""
    return {name: getattr(importlib.import_module(f"{package}.{name}"), attribute)
            for name in names}
