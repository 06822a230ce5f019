"""Pareto-optimal trials over several objectives.

A trial is on the front when no other candidate is at least as good on every objective and
strictly better on one. Candidates are the trials that ended normally (terminated, or
stopped by a scheduler or a stop rule) with a finite value of every objective; each
objective's value is the trial's last reported one, as the searcher is told at its end
(the `obj_<metric>` columns of trials.parquet). With one objective the front is the trials
that share the best value.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

CANDIDATES = ("terminated", "stopped")
PREFIX = "obj_"  # trials.parquet column of an objective's value: obj_<metric>


def pareto_mask(values: np.ndarray, modes: Sequence[str]) -> np.ndarray:
    """Which rows of `values` (trials x objectives) no other row dominates."""
    signs = np.array([1.0 if mode == "max" else -1.0 for mode in modes])
    v = np.asarray(values, dtype="float64") * signs  # every objective maximised
    mask = np.ones(len(v), dtype=bool)
    for i in range(len(v)):
        dominates_i = np.all(v >= v[i], axis=1) & np.any(v > v[i], axis=1)
        mask[i] = not dominates_i.any()
    return mask


def pareto_column(trials: pd.DataFrame, goals: Sequence[tuple[str, str]]) -> pd.Series:
    """True on the front, False off it, None for trials that are not candidates."""
    columns = [PREFIX + metric for metric, _ in goals]
    values = trials[columns].apply(pd.to_numeric, errors="coerce").astype("float64")
    ok = trials["status"].isin(CANDIDATES) & np.isfinite(values).all(axis=1)
    out = pd.Series([None] * len(trials), index=trials.index, dtype=object)
    if ok.any():
        front = pareto_mask(values[ok].to_numpy(), [mode for _, mode in goals])
        out[ok] = front.tolist()
    return out


def front(trials: pd.DataFrame, goals: Sequence[tuple[str, str]]) -> pd.DataFrame:
    """The Pareto-optimal rows, sorted by the first objective (best first)."""
    on = trials[trials["pareto"].fillna(False).astype(bool)]
    metric, mode = goals[0]
    return on.sort_values(PREFIX + metric, ascending=mode == "min")
