"""One self-contained report.html: every script and style inline, so it opens offline.

Each section is a `<section>` with a stable id (SECTION_IDS) that tests and links rely on;
a section with nothing to show (no PBT, no confirmation runs) still renders, with a note.
"""

from __future__ import annotations

import html
import json
import logging
import os
from pathlib import Path

import pandas as pd

import raytune_ft.analysis._plots as _plots
from raytune_ft.analysis._compare import compute_to_reach, device_factor, goals_of
from raytune_ft.analysis._export import (
    build_tables,
    frames,
    read_tables,
    write_tables,
)
from raytune_ft.analysis._importance import hyperparameter_importance
from raytune_ft.analysis._pareto import PREFIX, front
from raytune_ft.analysis._tables import HP, load_experiment
from raytune_ft.experiment import (
    ANALYSIS_DIR,
    CONFIG_FILE,
    CONFIRM_FILE,
    REPORT_FILE,
    STOP_FILE,
    confirm_summary,
    rank_by,
    ranking_column,
    read_confirm_rows,
    read_record,
)
from raytune_ft.storage import atomic_write

logger = logging.getLogger(__name__)

SECTION_IDS = (
    "summary",
    "learning-curves",
    "hyperparameters-vs-metric",
    "parallel-coordinates",
    "best-so-far",
    "pbt-schedules",
    "importance",
    "confirmation",
    "pareto",
    "deployment",
)
_CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1300px;color:#222}
section{margin:2.5em 0}h2{border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:3px 8px}
th{background:#f5f5f5}.note{color:#666;font-style:italic}"""


def _section(sid: str, title: str, intro: str, body: str) -> str:
    return (
        f'<section id="{sid}"><h2>{html.escape(title)}</h2>'
        f"<p>{html.escape(intro)}</p>{body}</section>"
    )


def _fig(fig, sid: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=f"{sid}-plot")


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.5g}", border=0)


def _summary(trials: pd.DataFrame, metric: str, mode: str, reach: dict) -> str:
    counts = trials["status"].value_counts().to_dict()
    top = rank_by(trials, mode, ranking_column(trials.attrs.get("raytune_ft.scheduler")))
    top = top.head(10)
    cols = [
        "trial_id",
        "status",
        *[c for c in trials.columns if c.startswith(HP)],
        "best_metric",
        "best_iteration",
        "epochs",
        "device_s",
    ]
    facts = (
        f"{len(trials)} trials ({', '.join(f'{k}: {v}' for k, v in counts.items())}); "
        f"metric {metric} ({mode}); device hours {trials['device_s'].sum() / 3600:.4g}; "
        f"samples to within {reach.get('tolerance')} of best: "
        f"{reach.get('samples_to_within')}"
    )
    return _note(facts) + _table(top[cols])


def _pareto(trials: pd.DataFrame) -> str:
    goals = goals_of(trials)
    if len(goals) < 2:
        return _note("One objective: set `objectives:` (two or more) to trade them off.")
    on = front(trials, goals)
    if on.empty:
        return _note("No trial ended normally with every objective reported yet.")
    cols = ["trial_id", "status", *(PREFIX + m for m, _ in goals),
            *(c for c in trials.columns if c.startswith(HP))]
    return _fig(_plots.pareto_front(trials, goals), "pareto") + _table(on[cols])


DEPLOYMENT_SHOWN = ("param_count", "trainable_param_count", "model_mb", "checkpoint_mb",
                    "latency_ms_b1", "latency_ms_eval_batch", "latency_eval_batch",
                    "latency_threads", "latency_device")


def _deployment(trials: pd.DataFrame) -> str:
    cols = [c for c in DEPLOYMENT_SHOWN if c in trials.columns]
    shown = trials[trials[cols].notna().any(axis=1)] if cols else trials.iloc[:0]
    if shown.empty:
        return _note("No trial reported deployment figures (they come with its first "
                     "evaluation).")
    return _table(shown[["trial_id", "status", *cols]])


def _stop_note(exp_dir: Path) -> str:
    path = exp_dir / STOP_FILE
    if not path.is_file():
        return ""
    try:
        reason = json.loads(path.read_text())
        return _note(f"Search stopped early by run.stop.{reason['rule']}: {reason['detail']}.")
    except (OSError, ValueError, KeyError):
        return _note(f"{STOP_FILE} is unreadable.")


def _warm_start_note(exp_dir: Path) -> str:
    """Where the searcher's prior came from: the record's `warm_start` (--warm-start)."""
    if not (exp_dir / CONFIG_FILE).is_file():
        return ""
    sources = read_record(str(exp_dir))[1].get("warm_start")
    if not sources:
        return ""
    listed = "; ".join(f"{s['experiment']} ({s['trials']} trials{_skipped(s)})"
                       for s in sources)
    total = sum(s["trials"] for s in sources)
    return _note(f"Warm start: the searcher began with {total} earlier trials from "
                 f"{listed}.")


def _skipped(source: dict) -> str:
    """`, 1 skipped: train.freeze_layers != 0 (1)`: trials of a source left out, and why."""
    if not source.get("skipped"):
        return ""
    why = ", ".join(f"{reason} ({n})" for reason, n in sorted(source.get("why", {}).items()))
    return f", {source['skipped']} skipped: {why}"


def _confirmation(exp_dir: Path, metric: str, mode: str) -> str:
    if not (exp_dir / ANALYSIS_DIR / CONFIRM_FILE).is_file():
        return _note(
            f"No {ANALYSIS_DIR}/{CONFIRM_FILE}: run `raytune-ft confirm` to re-train "
            "the best configurations with several seeds."
        )
    summary = confirm_summary(read_confirm_rows(exp_dir), mode)  # as `raytune-ft confirm`
    return _table(summary) + _fig(_plots.confirmation_bars(summary, metric), "confirmation")


def _importance(trials: pd.DataFrame) -> str:
    imp = hyperparameter_importance(trials)
    if imp.empty:
        return _note(f"Not ranked: {imp.attrs.get('reason')}")
    return _fig(_plots.importance_bars(imp), "importance") + _table(imp)


_TEXT = {  # section id -> (title, one-line explanation); {metric} is filled in
    "summary": ("Summary", "Best trials by their best metric."),
    "learning-curves": (
        "Learning curves",
        "{metric} against samples seen; stopped trials dotted grey, diverged/errored dashed.",
    ),
    "hyperparameters-vs-metric": (
        "Hyperparameters vs final metric",
        "Each trial's last reported metric; log axis for log-searched hyperparameters.",
    ),
    "parallel-coordinates": ("Parallel coordinates", "Lines colored by best metric."),
    "best-so-far": (
        "Best so far vs compute",
        "Best metric found so far against cumulative device hours, in reporting order.",
    ),
    "pbt-schedules": (
        "PBT: hyperparameters over time",
        "Each trial's hyperparameters per iteration; stars mark exploits.",
    ),
    "importance": (
        "Hyperparameter importance",
        "Permutation importance of a random forest fitted to the trials' best metric "
        "(fitted and scored on the same trials).",
    ),
    "pareto": (
        "Pareto front",
        "Trials no other trial beats on every objective (last reported values of trials "
        "that ended normally); the searcher optimises all objectives, schedulers the first.",
    ),
    "deployment": (
        "Deployment figures",
        "Per trial, measured on its own device after its first evaluation: parameters, "
        "checkpoint size, median latency per example at batch 1 and at the eval batch.",
    ),
    "confirmation": (
        "Confirmation runs",
        "Top configurations re-trained with several seeds: mean ± sample sd over the n "
        "seeds that reached the end of their budget, best mean first.",
    ),
}


def _sections(exp_dir: Path, tables: dict[str, pd.DataFrame]) -> list[str]:
    """Every section in SECTION_IDS order; plots are built only when there is data."""
    trials, its, events = tables["trials"], tables["iterations"], tables["pbt_events"]
    metric = trials.attrs.get("raytune_ft.metric", "eval_accuracy")
    mode = trials.attrs.get("raytune_ft.mode", "max")
    log_scale = set(json.loads(trials.attrs.get("raytune_ft.log_scale", "[]")))
    factor = device_factor(trials)
    no_its = _note("No trial has reported an iteration yet.")
    no_pbt = _note("No PBT exploits in this experiment.")
    bodies = {
        "summary": lambda: _warm_start_note(exp_dir) + _stop_note(exp_dir) + _summary(
            trials, metric, mode, compute_to_reach(its, metric, mode, factor) if len(its) else {}
        ),
        "learning-curves": lambda: _plots.learning_curves(trials, its, metric),
        "hyperparameters-vs-metric": lambda: _plots.hp_vs_metric(trials, metric, log_scale),
        "parallel-coordinates": lambda: _plots.parallel_coordinates(trials, metric, log_scale),
        "best-so-far": lambda: _plots.best_so_far(its, metric, mode, factor),
        "pbt-schedules": lambda: _plots.pbt_schedules(its, events, log_scale),
        "importance": lambda: _importance(trials),
        "confirmation": lambda: _confirmation(exp_dir, metric, mode),
        "pareto": lambda: _pareto(trials),
        "deployment": lambda: _deployment(trials),
    }
    needs = {
        "learning-curves": (len(its), no_its),
        "best-so-far": (len(its), no_its),
        "pbt-schedules": (len(events), no_pbt),
    }
    out = []
    for sid in SECTION_IDS:
        ok, fallback = needs.get(sid, (True, ""))
        body = bodies[sid]() if ok else fallback
        html_body = body if isinstance(body, str) else _fig(body, sid)
        title, intro = _TEXT[sid]
        out.append(_section(sid, title, intro.format(metric=metric), html_body))
    return out


def _partial_note(trials: pd.DataFrame) -> str:
    """For an experiment still running (`raytune-ft report` during `tune`): say so. The report
    is built from the files on disk as they are; Ray copies results there at its snapshots."""
    running = int((trials["status"] == "running").sum()) if "status" in trials else 0
    if not running:
        return ""
    return (f'<p id="partial" class="note">partial: {running} of {len(trials)} trials were '
            "still running when this report was written; their latest results may not be on "
            "disk yet. Run raytune-ft report again once the experiment ends.</p>")


def export_with_report(experiment_dir: str | os.PathLike) -> Path:
    """`export_experiment`, then `write_report` from the same tables: the experiment's
    result files are parsed once. Returns the report's path."""
    exp = load_experiment(experiment_dir)
    tables = build_tables(exp)
    write_tables(tables, exp.path / ANALYSIS_DIR)
    return write_report(experiment_dir, tables=frames(tables))


def write_report(experiment_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                 tables: dict[str, pd.DataFrame] | None = None) -> Path:
    """Render `<experiment_dir>/analysis/report.html` (or `out`) and return its path.

    `tables` are `read_tables(experiment_dir)`, when the caller has them already.
    """
    from plotly.offline import get_plotlyjs

    exp_dir = Path(experiment_dir)
    tables = tables if tables is not None else read_tables(exp_dir)
    partial = _partial_note(tables["trials"])
    title = html.escape(f"raytune_ft report: {exp_dir.name}" + (" (partial)" if partial else ""))
    doc = "".join(
        [
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>',
            f"<style>{_CSS}</style><script>{get_plotlyjs()}</script></head><body>",
            f"<h1>{title}</h1>{partial}",
            *_sections(exp_dir, tables),
            "</body></html>",
        ]
    )
    path = Path(out) if out is not None else exp_dir / ANALYSIS_DIR / REPORT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as staging:
        staging.write_text(doc, encoding="utf-8")
    logger.info("wrote %s", path)
    return path
