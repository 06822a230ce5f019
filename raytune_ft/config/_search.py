"""What a search aims at and when it ends: objectives, Optuna's samplers, warm-start points,
and the rules that stop the whole search (`run.stop`). No torch, no Ray.

Which combinations work (checked by `check_search`):
- several objectives need a searcher that can weigh them: `optuna` (any sampler but
  `cmaes`, which Optuna runs single-objective only), or `random`/`grid` (which weigh
  nothing; analysis still marks the Pareto front); hyperopt's `tpe` takes one metric;
- schedulers (ASHA, HyperBand, PBT, PB2) and the stop rules watch the first objective.
"""

from __future__ import annotations

import importlib.util
import math
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from raytune_ft.config._base import _Strict

if TYPE_CHECKING:
    from raytune_ft.config._schema import ExperimentConfig

SAMPLERS = ("tpe", "gp", "cmaes", "nsga2", "random", "qmc")
SINGLE_OBJECTIVE_SAMPLERS = ("cmaes",)
# Packages a sampler needs beyond optuna itself, with the pip command that installs them.
SAMPLER_PACKAGES = {"cmaes": ("cmaes", "pip install cmaes"),
                    "gp": ("torch", "pip install torch"),
                    "qmc": ("scipy", "pip install scipy")}
OPTUNA_PIP = "pip install 'raytune_ft[optuna]'"


class Objective(_Strict):
    metric: str  # any reported metric, deployment figures included (latency_ms_b1, ...)
    mode: Literal["max", "min"]


class PlateauConfig(_Strict):
    patience: int = Field(gt=0)  # finished trials in a row that did not improve the best
    min_delta: float = Field(0.0, ge=0)  # smaller gains of the best do not count


class StopConfig(_Strict):
    """Rules that end the whole search early; the first objective is the one watched."""

    plateau: PlateauConfig | None = None
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


def check_search(config: ExperimentConfig) -> None:
    """The searcher's settings against the objectives and the search space."""
    alg = config.search_alg
    if alg.type != "optuna":
        for key in ("sampler", "multivariate"):
            if getattr(alg, key) is not None:
                raise ValueError(f"search_alg.{key}: only with search_alg.type: optuna "
                                 f"(got type {alg.type!r})")
    _check_population(config)
    objectives = config.objective_list()
    if len(objectives) > 1 and alg.type == "tpe":
        raise ValueError(f"objectives: {len(objectives)} objectives, but search_alg.type "
                         "'tpe' (hyperopt) optimises one metric; use search_alg.type: optuna "
                         "(sampler tpe, gp, nsga2, random or qmc), or a single objective")
    if alg.type == "optuna":
        _check_optuna(config, len(objectives))
    for i, point in enumerate(alg.points_to_evaluate):
        _check_point(config, i, point)


def _check_population(config: ExperimentConfig) -> None:
    """PBT and PB2 choose and mutate configurations themselves: Ray's
    `PopulationBasedTraining` refuses a searcher when the first trial is added (a
    traceback after the experiment folder is laid out), so refuse it here."""
    from raytune_ft.config._schedulers import PbtConfig

    alg = config.search_alg
    if isinstance(config.scheduler, PbtConfig) and alg.type in ("tpe", "optuna"):
        raise ValueError(f"search_alg.type: {alg.type!r} cannot drive scheduler.type "
                         f"{config.scheduler.type!r}, which picks and mutates its own "
                         "configurations; use search_alg.type random or grid with it")


def _check_optuna(config: ExperimentConfig, n_objectives: int) -> None:
    alg = config.search_alg
    if importlib.util.find_spec("optuna") is None:
        raise ValueError(f"search_alg.type: optuna needs the optuna package: {OPTUNA_PIP}")
    sampler = alg.sampler or "tpe"
    if sampler in SAMPLER_PACKAGES:
        module, pip = SAMPLER_PACKAGES[sampler]
        if importlib.util.find_spec(module) is None:
            raise ValueError(f"search_alg.sampler: {sampler} needs the {module} package: "
                             f"{pip}")
    if n_objectives > 1 and sampler in SINGLE_OBJECTIVE_SAMPLERS:
        raise ValueError(f"search_alg.sampler: {sampler} optimises one objective, but "
                         f"{n_objectives} are set; use tpe, gp, nsga2, random or qmc")
    if alg.multivariate is not None and sampler != "tpe":
        raise ValueError(f"search_alg.multivariate: only with sampler tpe (got sampler "
                         f"{sampler!r})")
    logq = [key for key, domain in config.space().items() if domain.kind == "qloguniform"]
    if logq:  # Optuna's FloatDistribution cannot combine log and step (Ray drops the q)
        raise ValueError(f"search.{logq[0]}: qloguniform cannot be searched by Optuna (its "
                         "log-scale distributions take no step q); use loguniform, or "
                         "quniform")
    grids = [key for key, domain in config.space().items() if domain.kind == "grid"]
    if grids:
        raise ValueError(f"search.{grids[0]}: grid cannot be searched by Optuna; use choice, "
                         "or search_alg.type: grid")


def _check_point(config: ExperimentConfig, i: int, point: dict[str, Any]) -> None:
    """A starting point sets every searched key to a value its domain can produce."""
    space = config.space()
    where = f"search_alg.points_to_evaluate.{i}"
    for key in point:
        if key not in space:
            raise ValueError(f"{where}.{key}: not searched; searched keys: "
                             f"{', '.join(space) or 'none'}")
    for key, domain in space.items():
        if domain.kind == "constant":
            continue
        if key not in point:
            raise ValueError(f"{where}: {key} is missing; a point sets every searched key "
                             f"({', '.join(k for k, d in space.items() if d.kind != 'constant')})")
        if not domain_contains(domain, point[key]):
            raise ValueError(f"{where}.{key}: {point[key]!r} is outside search.{key} "
                             f"({domain.kind} {list(domain.args)})")


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
