"""Compare experiments: the best trials of one, or best metric and compute across several.

"Compute to reach within tolerance" walks every reported iteration of an experiment in the
order it was reported (timestamp), summing the compute each report cost, and stops at the
first report whose best-so-far metric is within the tolerance of the experiment's best.
The tolerance is half a point of the metric's scale: 0.005 when every value of the metric
lies in [0, 1] (accuracy, F1 as fractions), 0.5 otherwise (percentages and other scales).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from raytune_ft.analysis._errors import AnalysisArgumentError
from raytune_ft.analysis._export import read_tables
from raytune_ft.analysis._pareto import PREFIX, front
from raytune_ft.analysis._tables import HP
from raytune_ft.experiment import rank_by, ranking_column

FORMATS = ("table", "markdown", "csv", "json")
FRACTION_TOL = 0.005  # half a point of a metric reported as a fraction in [0, 1]
POINTS_TOL = 0.5  # half a point of a metric on any other scale (e.g. percent)


def tolerance(values: pd.Series) -> float:
    """Half a point of the metric's scale; see the module docstring."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    return FRACTION_TOL if len(v) and v.between(0.0, 1.0).all() else POINTS_TOL


def device_factor(trials: pd.DataFrame) -> float:
    """Device-seconds per wall-second of one trial (gpus or cpus per trial)."""
    wall, dev = trials["wall_s"].sum(), trials["device_s"].sum()
    return float(dev / wall) if wall > 0 else 1.0


def compute_to_reach(iterations: pd.DataFrame, metric: str, mode: str, factor: float) -> dict:
    """Cumulative samples and device hours until the best-so-far is within tolerance of best."""
    it = iterations.sort_values(["timestamp", "time_total_s", "trial_id", "iteration"])
    vals = pd.to_numeric(it[metric], errors="coerce").astype("float64").to_numpy()
    if np.isnan(vals).all():
        return {"samples_to_within": None, "device_h_to_within": None, "tolerance": None}
    sign = 1.0 if mode == "max" else -1.0
    so_far = np.fmax.accumulate(np.where(np.isnan(vals), -np.inf, sign * vals))
    tol = tolerance(it[metric])
    first = int(np.argmax(so_far >= so_far[-1] - tol))
    samples = it["compute_samples"].astype("float64").fillna(0).cumsum().to_numpy()
    secs = it["compute_s"].astype("float64").fillna(0).cumsum().to_numpy()
    return {
        "samples_to_within": float(samples[first]),
        "device_h_to_within": float(secs[first] * factor / 3600),
        "tolerance": tol,
    }


def _one_experiment(tables: dict[str, pd.DataFrame], top: int, sort: str | None) -> pd.DataFrame:
    trials = tables["trials"].copy()
    mode = trials.attrs.get("raytune_ft.mode", "max")
    metric = trials.attrs.get("raytune_ft.metric", "metric")
    trials["device_h"] = trials["device_s"] / 3600
    hps = [c for c in trials.columns if c.startswith(HP)]
    cols = ["trial_id", "status", *hps, "best_metric", "best_iteration", "epochs", "device_h"]
    out = trials[cols].rename(columns={"best_metric": metric})
    key, asc = _sort_key(sort, metric, mode)
    if key not in out.columns:
        raise AnalysisArgumentError(f"sort is {sort!r}, but must be one of {list(out.columns)}")
    return out.sort_values(key, ascending=asc, na_position="last").head(top)


def _sort_key(sort: str | None, metric: str, mode: str) -> tuple[str, bool]:
    """`sort` names a column; a leading '-' sorts descending. Default: best metric first."""
    if sort is None:
        return metric, mode == "min"
    if sort.startswith("-"):
        return sort[1:], False
    return sort, True


def goals_of(trials: pd.DataFrame) -> list[tuple[str, str]]:
    """The experiment's objectives, from the trials table's metadata."""
    goals = json.loads(trials.attrs.get("raytune_ft.objectives", "[]"))
    if goals:
        return [(metric, mode) for metric, mode in goals]
    return [(trials.attrs.get("raytune_ft.metric", "metric"),
             trials.attrs.get("raytune_ft.mode", "max"))]


def _pareto_front(tables: dict[str, pd.DataFrame], top: int) -> pd.DataFrame:
    """The Pareto-optimal trials: objectives first, then hyperparameters and deployment."""
    trials = tables["trials"]
    goals = goals_of(trials)
    on = front(trials, goals)
    hps = [c for c in trials.columns if c.startswith(HP)]
    objectives = [PREFIX + metric for metric, _ in goals]
    extra = [c for c in ("param_count", "trainable_param_count", "model_mb", "checkpoint_mb",
                         "latency_ms_b1", "latency_ms_eval_batch")
             if c not in {metric for metric, _ in goals}]
    out = on[["trial_id", "status", *objectives, *hps, *extra]]
    return out.rename(columns={c: c[len(PREFIX):] for c in objectives}).head(top)


def _summary(name: str, tables: dict[str, pd.DataFrame]) -> dict:
    trials, its = tables["trials"], tables["iterations"]
    mode = trials.attrs.get("raytune_ft.mode", "max")
    metric = trials.attrs.get("raytune_ft.metric", "eval_accuracy")
    factor = device_factor(trials)
    ranked = rank_by(trials, mode, ranking_column(trials.attrs.get("raytune_ft.scheduler")))
    best = ranked.iloc[0] if len(ranked) else None
    row = {
        "experiment": name,
        "metric": metric,
        "mode": mode,
        "trials": len(trials),
        "best_metric": None if best is None else float(best["search_metric"]),
        "best_trial": None if best is None else best["trial_id"],
        "samples": float(trials["compute_samples"].sum()),
        "device_h": float(trials["device_s"].sum() / 3600),
    }
    row.update(compute_to_reach(its, metric, mode, factor) if len(its) else {})
    return row


def _render(df: pd.DataFrame, fmt: str) -> str:
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return json.dumps(json.loads(df.to_json(orient="records")), indent=2)
    text = (
        df.astype(object)
        .where(df.notna(), "")
        .map(lambda v: f"{v:.6g}" if isinstance(v, float) else str(v))
    )
    if fmt == "table":
        return text.to_string(index=False)
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(r) + " |" for r in text.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def compare_experiments(
    dirs: Sequence[str | os.PathLike], top: int = 10, sort: str | None = None, fmt: str = "table",
    pareto: bool = False,
) -> str:
    """One directory: its `top` best trials (`pareto`: its Pareto-optimal trials). Several:
    one summary row per experiment."""
    if fmt not in FORMATS:
        raise AnalysisArgumentError(f"fmt is {fmt!r}, but must be one of {', '.join(FORMATS)}")
    if isinstance(dirs, (str, os.PathLike)):
        dirs = [dirs]
    if not dirs:
        raise AnalysisArgumentError("dirs is empty, but must name at least one experiment")
    if top < 1:
        raise AnalysisArgumentError(f"top is {top}, but must be >= 1")
    if pareto and len(dirs) != 1:
        raise AnalysisArgumentError(f"pareto lists the front of one experiment, but {len(dirs)} "
                                    "directories were given")
    if pareto:
        return _render(_pareto_front(read_tables(dirs[0]), top), fmt)
    if len(dirs) == 1:
        return _render(_one_experiment(read_tables(dirs[0]), top, sort), fmt)
    rows = [_summary(os.path.basename(os.path.normpath(d)), read_tables(d)) for d in dirs]
    df = pd.DataFrame(rows)
    if sort is not None:
        key, asc = _sort_key(sort, "best_metric", "max")
        if key not in df.columns:
            raise AnalysisArgumentError(f"sort is {sort!r}, but must be one of {list(df.columns)}")
        df = df.sort_values(key, ascending=asc, na_position="last")
    return _render(df.head(top), fmt)
