"""What a run comes to (`tuning.summary`) and how the CLI prints it, from stand-in results:
no Ray, no model."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import pytest

from raytune_ft import cli
from raytune_ft.schema import validate_config
from raytune_ft.tuning import summary as summary_module
from raytune_ft.tuning.summary import RunSummary, best_trial, export_analysis, summarize_run


@dataclass
class Result:
    """The parts of a Tune `Result` the summary reads."""

    path: str
    values: list[float] = field(default_factory=list)  # the metric, per reported iteration
    config: dict = field(default_factory=dict)
    error: Exception | None = None
    diverged: bool = False

    @property
    def metrics(self) -> dict:
        if not self.values:
            return {}
        trial_id = self.path.split("_", 1)[1]
        return {"trial_id": trial_id, "eval_loss": self.values[-1], "diverged": self.diverged}

    @property
    def metrics_dataframe(self) -> pd.DataFrame | None:
        return pd.DataFrame({"eval_loss": self.values}) if self.values else None


def config(scheduler: dict | None = None):
    return validate_config({
        "name": "exp", "metric": "eval_loss", "mode": "min", "model": {"name": "m"},
        "data": {"task": "sst2"}, "search": {"learning_rate": {"loguniform": [1e-5, 1e-3]}},
        "scheduler": scheduler or {"type": "asha"}})


PBT = {"type": "pbt", "perturbation_interval": 1, "mutations": ["learning_rate"]}
RESULTS = [
    Result("/x/train_00000", [0.1], {"learning_rate": 1e-3}, error=RuntimeError("a\nboom")),
    Result("/x/train_00001", [0.05, 1e9], {"learning_rate": 2e-3}, diverged=True),
    Result("/x/train_00002", [0.6, 0.4, 0.5], {"learning_rate": 3e-4}),
    Result("/x/train_00003", [0.7, 0.45], {"learning_rate": 1e-4}),
]


def test_the_best_trial_is_ranked_by_the_one_rule():
    best, _ = best_trial(RESULTS, config())  # errored and diverged trials never win
    assert (best.trial_id, best.value, best.searched) == ("00002", 0.4, {"learning_rate": 3e-4})
    best, _ = best_trial(RESULTS, config(PBT))  # population-based: by the last value
    assert (best.trial_id, best.value) == ("00003", 0.45)


def test_a_tie_goes_to_the_trial_tune_created_first():
    # as ResultGrid.get_best_result: the first of equal values in Tune's order
    tied = [Result("/x/train_00005", [0.3], {"learning_rate": 5e-4}),
            Result("/x/train_00001", [0.3], {"learning_rate": 1e-4})]
    assert best_trial(tied, config())[0].trial_id == "00005"


def test_no_best_trial_says_why():
    best, why = best_trial([Result("/x/train_00000")], config())
    assert best is None and why == "no trial reported eval_loss"
    best, why = best_trial(RESULTS[:2], config())
    assert best is None
    assert why == "no trial reported eval_loss by a trial that neither failed nor diverged"


def test_the_summary_counts_trials_and_keeps_the_export_warning(monkeypatch):
    monkeypatch.setattr(summary_module, "export_analysis", lambda d: (None, "export failed"))
    summary = summarize_run(RESULTS, "/x", config(), interrupted=False)
    assert (summary.trials, summary.diverged) == (4, 1)
    assert summary.failed == [("/x/train_00000", "boom")]
    assert summary.export_warning == "export failed" and summary.report is None
    assert not summary.every_trial_failed


def test_a_failed_analysis_export_is_a_warning_that_says_how_to_retry(tmp_path):
    report, warning = export_analysis(str(tmp_path))
    assert report is None
    assert warning.startswith("analysis export failed (") and "raytune-ft analyze" in warning


def test_the_cli_prints_the_summary(capsys):
    summary = RunSummary("/x", 4, [("/x/train_00000", "boom")], 1,
                         best_trial(RESULTS, config())[0], report="/x/analysis/report.html")
    assert cli._finish(summary) == cli.EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out == ["trials       4 run, 1 failed, 1 diverged",
                   "  failed     /x/train_00000: boom",
                   "report       /x/analysis/report.html",
                   "best         eval_loss=0.4000 {'learning_rate': 0.0003}",
                   "results      /x"]


@pytest.mark.parametrize(("summary", "code", "stderr"), [
    (RunSummary("/x", 1, [("/x/t", "boom")], export_warning="w"), cli.EXIT_FAILED,
     "warning: w\nerror: every trial failed; first error: boom\n"),
    (RunSummary("/x", 0, report="r"), cli.EXIT_FAILED,
     "error: every trial failed; first error: no trial ran\n"),
    (RunSummary("/x", 2, report="r", interrupted=True), cli.EXIT_INTERRUPTED,
     "interrupted: trials stopped at their last checkpoint; continue with "
     "`raytune-ft resume /x`\n"),
])
def test_the_cli_exit_code_follows_the_summary(summary, code, stderr, capsys):
    assert cli._finish(summary) == code
    assert capsys.readouterr().err == stderr


def test_no_best_trial_is_printed_as_such(capsys):
    summary = RunSummary("/x", 1, report="r", no_best="no trial reported eval_loss")
    assert cli._finish(summary) == cli.EXIT_OK
    assert "best         no trial reported eval_loss" in capsys.readouterr().out
