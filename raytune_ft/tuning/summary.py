"""What a finished (or interrupted) run comes to, for the CLI to print: trials run, failed
and diverged, the best trial by the experiment folder's ranking rule, the analysis report.

Built from Tune's ResultGrid, so it needs neither the analysis tables nor a local folder:
an experiment on object storage is summarised the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raytune_ft.errors import last_line
from raytune_ft.experiment import ANALYSIS_DIR, REPORT_FILE, rank_trials
from raytune_ft.schema import ExperimentConfig

log = logging.getLogger(__name__)


@dataclass
class BestTrial:
    trial_id: str
    metric: str
    value: float  # what it is ranked by: its best value, under PBT its last one
    searched: dict[str, Any]  # the searched hyperparameters in its (final) config


@dataclass
class RunSummary:
    experiment_dir: str
    trials: int  # trials Tune ran (or started)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (trial folder, error line)
    diverged: int = 0
    best: BestTrial | None = None
    no_best: str = ""  # why there is no best trial, when there is none
    report: str | None = None  # where the analysis report is
    export_warning: str | None = None  # why it is not, when the analysis export failed
    interrupted: bool = False  # Ctrl-C stopped the run; `raytune-ft resume` continues it
    stopped_by: dict | None = None  # the `run.stop` rule that ended the search early
    not_logged: list[str] = field(default_factory=list)  # trackers that failed: what they missed

    @property
    def every_trial_failed(self) -> bool:
        return len(self.failed) == self.trials

    @property
    def first_error(self) -> str:
        return self.failed[0][1] if self.failed else "no trial ran"


def summarize_run(results, experiment_dir: str, config: ExperimentConfig,
                  interrupted: bool) -> RunSummary:
    """Count the trials, rank them, and write the analysis tables and report."""
    failed = [(str(r.path), last_line(r.error)) for r in results if r.error is not None]
    diverged = sum(1 for r in results if r.error is None and (r.metrics or {}).get("diverged"))
    best, no_best = best_trial(results, config)
    report, warning = export_analysis(experiment_dir)
    return RunSummary(experiment_dir, len(results), failed, diverged, best, no_best, report,
                      warning, interrupted, stopped_by=_stop_reason(experiment_dir, config))


def _stop_reason(experiment_dir: str, config: ExperimentConfig) -> dict | None:
    if not config.run.stop.any:
        return None
    from raytune_ft.tuning.stopping import read_stop_reason

    return read_stop_reason(experiment_dir)


def best_trial(results, config: ExperimentConfig) -> tuple[BestTrial | None, str]:
    """The ResultGrid's best trial by `experiment.rank_trials`, or None and why not."""
    import pandas as pd

    metric = config.metric
    by_id, rows = {}, []
    for created, result in enumerate(results):  # Tune's creation order
        last = result.metrics or {}
        trial_id = str(last.get("trial_id") or Path(result.path).name)
        frame = result.metrics_dataframe
        values = (frame[metric].dropna() if frame is not None and metric in frame
                  else pd.Series(dtype="float64"))
        status = ("errored" if result.error is not None
                  else "diverged" if last.get("diverged") else "ok")
        rows.append({"trial_id": trial_id, "status": status, "created": created,
                     "best_metric": (values.max() if config.mode == "max" else values.min())
                     if len(values) else None,
                     "last_metric": last.get(metric)})
        by_id[trial_id] = result
    trials = pd.DataFrame(rows, columns=["trial_id", "status", "created", "best_metric",
                                         "last_metric"])
    ranked = rank_trials(trials.astype({"best_metric": "float64", "last_metric": "float64"}),
                         config)
    if ranked.empty:
        reported = trials[["best_metric", "last_metric"]].notna().to_numpy().any()
        why = " by a trial that neither failed nor diverged" if reported else ""
        return None, f"no trial reported {metric}{why}"
    top = ranked.iloc[0]
    chosen = by_id[top["trial_id"]]
    searched = {key: chosen.config.get(key) for key in config.search}
    return BestTrial(top["trial_id"], metric, float(top["search_metric"]), searched), ""


def export_analysis(experiment_dir: str) -> tuple[str | None, str | None]:
    """Parquet tables and report.html for what exists: (where the report is, None), or
    (None, a warning) when the export failed, which loses no results."""
    from raytune_ft.analysis import export_with_report
    from raytune_ft.storage import local_experiment

    try:
        with local_experiment(experiment_dir, ANALYSIS_DIR) as local:
            report = export_with_report(local)
    except Exception as error:  # noqa: BLE001 - the experiment itself is complete
        log.debug("analysis export of %s failed", experiment_dir, exc_info=True)
        return None, (f"analysis export failed ({last_line(error)}); retry with "
                      f"`raytune-ft analyze {experiment_dir}`")
    if local == experiment_dir:
        return str(report), None
    return f"{experiment_dir}/{ANALYSIS_DIR}/{REPORT_FILE}", None
