"""What a search aims at and when it ends: objectives, Optuna's samplers, warm-start points,
and the rules that stop the whole search (`run.stop`). No torch, no Ray.

Which combinations work (checked by `raytune_ft.schema` once the experiment is assembled):
- several objectives need a searcher that can weigh them: `optuna` (any sampler but
  `cmaes`, which Optuna runs single-objective only), or `random`/`grid` (which weigh
  nothing; analysis still marks the Pareto front); hyperopt's `tpe` takes one metric;
- schedulers (ASHA, HyperBand, PBT, PB2) and the stop rules watch the first objective.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import Field

from raytune_ft.config._base import Strict

SAMPLERS = ("tpe", "gp", "cmaes", "nsga2", "random", "qmc")
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)
# Packages a sampler needs beyond optuna itself, with the pip command that installs them.
SAMPLER_PACKAGES = {"cmaes": ("cmaes", "pip install cmaes"),
                    "gp": ("torch", "pip install torch"),
                    "qmc": ("scipy", "pip install scipy")}
OPTUNA_PIP = "pip install 'raytune_ft[optuna]'"


class Objective(Strict):
    metric: str  # any reported metric, deployment figures included (latency_ms_b1, ...)
    mode: Literal["max", "min"]


class PlateauConfig(Strict):
    patience: int = Field(gt=0)  # finished trials in a row that did not improve the best
    min_delta: float = Field(0.0, ge=0)  # smaller gains of the best do not count


class StopConfig(Strict):
    """Rules that end the whole search early; the first objective is the one watched."""

    plateau: PlateauConfig | None = None  # stop once the best stops improving
    max_device_hours: float | None = Field(None, gt=0)  # wall x (GPUs or CPUs) per trial
    target: float | None = None  # stop once a trial reports this value (or better)

    @property
    def any(self) -> bool:
        return (self.plateau is not None or self.max_device_hours is not None
                or self.target is not None)


def check_objectives(objectives: list[Objective], metric: str, mode: str,
                     reported: tuple[str, ...]) -> None:
    """Known metrics, no repeats, and `metric`/`mode` are the first objective's."""
    seen = set()
    for i, objective in enumerate(objectives):
        if objective.metric not in reported:
            raise ValueError(f"objectives.{i}.metric: {objective.metric!r} is never reported; "
                             f"allowed: {', '.join(reported)}")
        if objective.metric in seen:
            raise ValueError(f"objectives.{i}.metric: {objective.metric!r} is listed twice")
        seen.add(objective.metric)
    if objectives and (objectives[0].metric, objectives[0].mode) != (metric, mode):
        raise ValueError(f"metric: {metric!r} ({mode}) must be the first objective "
                         f"({objectives[0].metric!r}, {objectives[0].mode}); schedulers watch "
                         "it (leave metric and mode out to take it from objectives)")


def domain_contains(domain, value: Any) -> bool:
    """Whether `value` is one a search domain can produce (warm starts and starting points)."""
    if domain.kind in ("choice", "grid", "constant"):
        return any(value == v and type(value) is type(v) or (
            isinstance(value, (int, float)) and not isinstance(value, bool)
            and isinstance(v, (int, float)) and not isinstance(v, bool) and value == v)
            for v in domain.args)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    low, high = domain.args[0], domain.args[1]
    if domain.kind == "randint" and float(value) != int(value):
        return False
    if domain.kind in ("quniform", "qloguniform"):
        return on_grid(value, low, high, domain.args[2])
    return low <= value <= high


def on_grid(value: float, low: float, high: float, q: float) -> bool:
    """Whether `value` is a multiple of `q` within [low, high], as Ray's quantized samplers
    produce them (`round(x / q) * q`: 3 x 0.1 = 0.30000000000000004 counts as 0.3)."""
    steps = value / q
    if not math.isclose(steps, round(steps), rel_tol=1e-9, abs_tol=1e-9):
        return False
    return round(low / q) <= round(steps) <= round(high / q)
