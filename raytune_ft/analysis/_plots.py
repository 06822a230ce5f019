"""Plotly figures for the report, one function per section. plotly is imported lazily."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from raytune_ft.analysis._tables import HP

if TYPE_CHECKING:
    import plotly.graph_objects as go

STATUS_COLORS = {
    "terminated": "#1f77b4",
    "stopped": "#9e9e9e",
    "diverged": "#d62728",
    "errored": "#ff7f0e",
    "running": "#2ca02c",
}
STATUS_DASH = {"stopped": "dot", "diverged": "dash", "errored": "dash"}


def is_log(name: str, log_scale: set[str], values: pd.Series) -> bool:
    """Log axis for searched-on-log hyperparameters and anything named like a learning rate."""
    v = pd.to_numeric(values, errors="coerce").dropna()
    positive = len(v) > 0 and bool((v > 0).all())
    return positive and (name in log_scale or "learning_rate" in name or name in ("lr",))


def _numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def learning_curves(trials: pd.DataFrame, its: pd.DataFrame, metric: str) -> go.Figure:
    """Metric vs samples seen, one line per trial, one trace per status (gaps between trials)."""
    import plotly.graph_objects as go

    status = trials.set_index("trial_id")["status"]
    fig = go.Figure()
    df = its.assign(status=its["trial_id"].map(status)).sort_values(["trial_id", "iteration"])
    x_col = "samples_seen" if df["samples_seen"].notna().any() else "iteration"
    for st, g in df.groupby("status", sort=False):
        xs, ys, names = [], [], []
        for tid, t in g.groupby("trial_id", sort=False):
            xs += [*t[x_col].astype("float64").tolist(), None]
            ys += [*t[metric].astype("float64").tolist(), None]
            names += [tid] * len(t) + [None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines+markers",
                name=f"{st} ({g['trial_id'].nunique()})",
                customdata=names,
                hovertemplate="%{customdata}<br>%{x}: %{y:.4f}<extra></extra>",
                line={"color": STATUS_COLORS.get(st), "dash": STATUS_DASH.get(st, "solid")},
                marker={"size": 4},
                connectgaps=False,
            )
        )
    fig.update_layout(
        xaxis_title=x_col.replace("_", " "), yaxis_title=metric, height=450, showlegend=True
    )
    return fig


def hp_vs_metric(trials: pd.DataFrame, metric: str, log_scale: set[str]) -> go.Figure:
    """One panel per hyperparameter: its value against each trial's final metric."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    hps = [c for c in trials.columns if c.startswith(HP)]
    cols = min(3, max(1, len(hps)))
    rows = max(1, math.ceil(len(hps) / cols))
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=[h[len(HP) :] for h in hps])
    for i, col in enumerate(hps):
        r, c = i // cols + 1, i % cols + 1
        x = trials[col] if _numeric(trials[col]) else trials[col].astype(str)
        for st, g in trials.assign(_x=x).groupby("status", sort=False):
            fig.add_trace(
                go.Scatter(
                    x=g["_x"],
                    y=g["last_metric"],
                    mode="markers",
                    name=st,
                    legendgroup=st,
                    showlegend=i == 0,
                    marker={"color": STATUS_COLORS.get(st), "size": 8},
                    text=g["trial_id"],
                    hovertemplate="%{text}<br>%{x}: %{y:.4f}<extra></extra>",
                ),
                row=r,
                col=c,
            )
        if _numeric(trials[col]) and is_log(col[len(HP) :], log_scale, trials[col]):
            fig.update_xaxes(type="log", row=r, col=c)
    fig.update_yaxes(title_text=f"final {metric}", col=1)
    fig.update_layout(height=320 * rows)
    return fig


def parallel_coordinates(trials: pd.DataFrame, metric: str, log_scale: set[str]) -> go.Figure:
    """Every trial as a line through its hyperparameters and best metric."""
    import plotly.graph_objects as go

    df = trials.dropna(subset=["best_metric"])
    dims = []
    for col in (c for c in df.columns if c.startswith(HP)):
        name, s = col[len(HP) :], df[col]
        if _numeric(s) and is_log(name, log_scale, s):
            dims.append({"label": f"log10({name})", "values": np.log10(s.astype("float64"))})
        elif _numeric(s):
            dims.append({"label": name, "values": s.astype("float64")})
        else:
            codes, levels = pd.factorize(s.astype(str))
            dims.append(
                {
                    "label": name,
                    "values": codes,
                    "tickvals": list(range(len(levels))),
                    "ticktext": list(levels),
                }
            )
    y = df["best_metric"].astype("float64")
    dims.append({"label": metric, "values": y})
    line = {"color": y, "colorscale": "Viridis", "showscale": True}
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line))
    fig.update_layout(height=450)
    return fig


def best_so_far(its: pd.DataFrame, metric: str, mode: str, factor: float) -> go.Figure:
    """Best metric found so far against device hours spent, in reporting order."""
    import plotly.graph_objects as go

    it = its.sort_values(["timestamp", "time_total_s", "trial_id", "iteration"])
    vals = it[metric].astype("float64").to_numpy()
    hours = it["compute_s"].astype("float64").fillna(0).cumsum().to_numpy() * factor / 3600
    sign = 1.0 if mode == "max" else -1.0
    best = sign * np.fmax.accumulate(np.where(np.isnan(vals), -np.inf, sign * vals))
    best = np.where(np.isfinite(best), best, np.nan)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=hours,
            y=vals,
            mode="markers",
            name="each report",
            marker={"size": 4, "color": "#bbbbbb"},
            text=it["trial_id"],
        )
    )
    fig.add_trace(
        go.Scatter(
            x=hours, y=best, mode="lines", name="best so far", line={"shape": "hv", "width": 3}
        )
    )
    fig.update_layout(xaxis_title="cumulative device hours", yaxis_title=metric, height=420)
    return fig


def pbt_schedules(its: pd.DataFrame, events: pd.DataFrame, log_scale: set[str]) -> go.Figure:
    """Each trial's hyperparameters per iteration; a star where an exploit's new value starts.

    A clone resumes from the donor's checkpoint, so its next report is donor_iteration + 1.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    hps = [c for c in its.columns if c.startswith(HP) and its[c].nunique() > 1]
    hps = hps or [c for c in its.columns if c.startswith(HP)][:1]
    fig = make_subplots(
        rows=max(1, len(hps)),
        cols=1,
        shared_xaxes=True,
        subplot_titles=[h[len(HP) :] for h in hps],
    )
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    for r, col in enumerate(hps, start=1):
        for k, (tid, g) in enumerate(its.sort_values("iteration").groupby("trial_id")):
            y = g[col] if _numeric(g[col]) else g[col].astype(str)
            fig.add_trace(
                go.Scatter(
                    x=g["iteration"],
                    y=y,
                    mode="lines+markers",
                    name=tid,
                    legendgroup=tid,
                    showlegend=r == 1,
                    line={"shape": "hv", "color": palette[k % len(palette)]},
                ),
                row=r,
                col=1,
            )
        new = "new_" + col
        if len(events) and new in events.columns:
            fig.add_trace(
                go.Scatter(
                    x=events["donor_iteration"] + 1,
                    y=events[new],
                    mode="markers",
                    name="exploit",
                    legendgroup="exploit",
                    showlegend=r == 1,
                    marker={"symbol": "star", "size": 12, "color": "black"},
                    text=events["target_trial_id"] + " ← " + events["donor_trial_id"],
                    hovertemplate="%{text}<br>iteration %{x}: %{y}<extra>exploit</extra>",
                ),
                row=r,
                col=1,
            )
        if _numeric(its[col]) and is_log(col[len(HP) :], log_scale, its[col]):
            fig.update_yaxes(type="log", row=r, col=1)
    fig.update_xaxes(title_text="iteration", row=max(1, len(hps)), col=1)
    fig.update_layout(height=300 * max(1, len(hps)))
    return fig


def importance_bars(imp: pd.DataFrame) -> go.Figure:
    import plotly.graph_objects as go

    df = imp.iloc[::-1]
    fig = go.Figure(
        go.Bar(
            x=df["importance"],
            y=df["hyperparameter"],
            orientation="h",
            error_x={"type": "data", "array": df["std"]},
        )
    )
    fig.update_layout(xaxis_title="mean drop in R² when shuffled", height=120 + 40 * len(df))
    return fig


def confirmation_bars(summary: pd.DataFrame, metric: str) -> go.Figure:
    import plotly.graph_objects as go

    fig = go.Figure(
        go.Bar(
            x=summary["config_rank"].astype(str),
            y=summary["mean"],
            error_y={"type": "data", "array": summary["sd"].fillna(0)},
        )
    )
    fig.update_layout(
        xaxis_title="config rank", yaxis_title=f"{metric} (mean ± sd over seeds)", height=380
    )
    return fig


def pareto_front(trials: pd.DataFrame, goals: list[tuple[str, str]]) -> go.Figure:
    """Two objectives: every candidate trial as a point, the front joined in order. More:
    parallel coordinates over the objectives, front trials highlighted."""
    import plotly.graph_objects as go

    from raytune_ft.analysis._pareto import PREFIX

    columns = [PREFIX + metric for metric, _ in goals]
    df = trials[trials["pareto"].notna()].copy()
    on = df["pareto"].astype(bool)
    if len(goals) == 2:
        x, y = columns
        fig = go.Figure()
        for name, part, color in (("dominated", df[~on], "#9e9e9e"),
                                  ("Pareto front", df[on].sort_values(x), "#d62728")):
            fig.add_trace(go.Scatter(
                x=part[x].astype("float64"), y=part[y].astype("float64"),
                mode="lines+markers" if name == "Pareto front" else "markers",
                name=f"{name} ({len(part)})", customdata=part["trial_id"],
                line={"color": color}, marker={"size": 9, "color": color},
                hovertemplate="%{customdata}<br>%{x:.5g}, %{y:.5g}<extra></extra>"))
        fig.update_layout(xaxis_title=f"{goals[0][0]} ({goals[0][1]})",
                          yaxis_title=f"{goals[1][0]} ({goals[1][1]})", height=450)
        return fig
    dims = [{"label": f"{metric} ({mode})", "values": df[col].astype("float64")}
            for (metric, mode), col in zip(goals, columns)]
    dims.append({"label": "Pareto", "values": on.astype(int), "tickvals": [0, 1],
                 "ticktext": ["no", "yes"]})
    line = {"color": on.astype(int), "colorscale": [[0, "#c7c7c7"], [1, "#d62728"]]}
    fig = go.Figure(go.Parcoords(dimensions=dims, line=line))
    fig.update_layout(height=450)
    return fig
