"""Hyperparameter importance: permutation importance of a random forest fitted over trials.

Each hyperparameter is permuted as a whole (all its one-hot columns together), so a
categorical is ranked as one hyperparameter, not as its levels. With a handful of trials the
forest is fitted and scored on the same trials: the ranking says what the forest uses to
explain the trials seen, not what generalises; read it with the trial count beside it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from raytune_ft.analysis._errors import AnalysisArgumentError
from raytune_ft.analysis._tables import HP

MIN_TRIALS = 3  # fewer trials cannot separate one hyperparameter's effect from another's
N_REPEATS = 10  # permutations per hyperparameter, averaged
COLUMNS = ["hyperparameter", "importance", "std", "n_trials", "method"]


def _empty(reason: str) -> pd.DataFrame:
    df = pd.DataFrame(
        {c: pd.Series(dtype="float64" if c in ("importance", "std") else object) for c in COLUMNS}
    )
    df.attrs["reason"] = reason
    return df


def _features(trials: pd.DataFrame) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Design matrix and hyperparameter -> its column indices; constant hyperparameters dropped."""
    blocks, groups, start = [], {}, 0
    for col in (c for c in trials.columns if c.startswith(HP)):
        s = trials[col]
        if s.nunique(dropna=False) < 2:
            continue
        if pd.api.types.is_bool_dtype(s) or pd.api.types.is_numeric_dtype(s):
            x = s.astype("float64")
            block = x.fillna(x.median()).to_numpy()[:, None]
        else:
            levels = s.astype(object).fillna("<missing>").astype(str)
            block = pd.get_dummies(levels).to_numpy(float)
        blocks.append(block)
        groups[col[len(HP) :]] = list(range(start, start + block.shape[1]))
        start += block.shape[1]
    x = np.hstack(blocks) if blocks else np.empty((len(trials), 0))
    return x, groups


def hyperparameter_importance(
    trials_df: pd.DataFrame, metric: str | None = None, mode: str | None = None
) -> pd.DataFrame:
    """Rank hyperparameters by how much the metric's random-forest fit relies on each.

    `metric` is a trials column (default `best_metric`); `mode` only names the direction in
    the result's attrs. Returns columns hyperparameter, importance (mean drop in R² when the
    hyperparameter is shuffled), std, n_trials, method; empty with `attrs["reason"]` when
    there is too little to rank.
    """
    if mode not in (None, "max", "min"):
        raise AnalysisArgumentError(f"mode is {mode!r}, but must be 'max', 'min' or None")
    target = metric or "best_metric"
    if target not in trials_df.columns:
        if metric == trials_df.attrs.get("raytune_ft.metric"):
            target = "best_metric"
        else:
            raise AnalysisArgumentError(
                f"metric is {metric!r}, but must be a column of the trials table"
            )
    y = pd.to_numeric(trials_df[target], errors="coerce").astype("float64")
    df = trials_df[y.notna().to_numpy()]
    y = y[y.notna()].to_numpy()
    if len(df) < MIN_TRIALS:
        return _empty(f"{len(df)} trials with a finite {target}; need at least {MIN_TRIALS}")
    x, groups = _features(df)
    if not groups:
        return _empty("no hyperparameter varies across the trials")
    from sklearn.ensemble import RandomForestRegressor

    model = RandomForestRegressor(n_estimators=100, random_state=0, n_jobs=1).fit(x, y)
    base = model.score(x, y)
    rng = np.random.default_rng(0)
    rows = []
    for name, cols in groups.items():
        drops = []
        for _ in range(N_REPEATS):
            xp = x.copy()
            xp[:, cols] = x[rng.permutation(len(x))][:, cols]
            drops.append(base - model.score(xp, y))
        rows.append([name, float(np.mean(drops)), float(np.std(drops)), len(df), "permutation"])
    out = pd.DataFrame(rows, columns=COLUMNS).sort_values("importance", ascending=False)
    out = out.reset_index(drop=True)
    out.attrs.update(reason="", target=target, mode=mode or trials_df.attrs.get("raytune_ft.mode"))
    return out
