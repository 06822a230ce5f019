"""compare_experiments, compute-to-reach and hyperparameter_importance."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from raytune_ft.analysis import (
    AnalysisArgumentError,
    compare_experiments,
    hyperparameter_importance,
    trials_table,
)
from raytune_ft.analysis._compare import compute_to_reach, tolerance


def test_one_experiment_lists_best_trials(experiments):
    out = compare_experiments([experiments["asha"]], top=3, fmt="csv")
    df = pd.read_csv(io.StringIO(out))
    assert len(df) == 3
    assert df["eval_accuracy"].is_monotonic_decreasing
    assert {"hp_learning_rate", "hp_schedule", "epochs", "device_h"} <= set(df.columns)
    assert df["hp_learning_rate"].iloc[0] == pytest.approx(3e-4)


def test_sort_and_formats(experiments):
    out = compare_experiments([experiments["asha"]], sort="-hp_learning_rate", fmt="json")
    rows = json.loads(out)
    assert [r["hp_learning_rate"] for r in rows] == sorted(
        (r["hp_learning_rate"] for r in rows), reverse=True
    )
    md = compare_experiments([experiments["asha"]], fmt="markdown").splitlines()
    assert md[0].startswith("| trial_id |") and md[1].startswith("|---")
    assert len(md) == 2 + 6
    assert "trial_id" in compare_experiments(experiments["asha"], fmt="table")


def test_several_experiments_one_row_each(experiments):
    dirs = [experiments["asha"], experiments["pbt"], experiments["restored"]]
    df = pd.DataFrame(json.loads(compare_experiments(dirs, fmt="json")))
    assert list(df["experiment"]) == ["asha", "pbt", "restored"]
    assert (df["tolerance"] == 0.005).all()
    assert (df["samples_to_within"] <= df["samples"]).all()
    assert (df["device_h_to_within"] <= df["device_h"] + 1e-12).all()
    trials = trials_table(experiments["restored"])
    row = df.set_index("experiment").loc["restored"]
    assert row["samples"] == trials["compute_samples"].sum() == 900
    assert row["best_metric"] == pytest.approx(trials["best_metric"].max())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"fmt": "xml"}, "fmt is 'xml'"), ({"top": 0}, "top is 0"), ({"sort": "nope"}, "sort is")],
)
def test_bad_arguments(experiments, kwargs, match):
    with pytest.raises(AnalysisArgumentError, match=match):
        compare_experiments([experiments["asha"]], **kwargs)


def test_compute_to_reach_exact():
    its = pd.DataFrame(
        {
            "trial_id": ["a", "b", "a", "b"],
            "iteration": [1, 1, 2, 2],
            "timestamp": [1.0, 2.0, 3.0, 4.0],
            "time_total_s": [1.0, 1.0, 2.0, 2.0],
            "eval_accuracy": [0.5, 0.8, 0.7, 0.804],
            "compute_samples": [100.0, 100.0, 100.0, 100.0],
            "compute_s": [3600.0, 3600.0, 3600.0, 3600.0],
        }
    )
    r = compute_to_reach(its, "eval_accuracy", "max", factor=2.0)
    assert r == {"samples_to_within": 200.0, "device_h_to_within": 4.0, "tolerance": 0.005}
    loss = its.assign(eval_accuracy=[5.0, 2.0, 3.0, 1.0])
    r = compute_to_reach(loss, "eval_accuracy", "min", factor=1.0)
    assert r["tolerance"] == 0.5 and r["samples_to_within"] == 400.0
    assert tolerance(pd.Series([0.1, 0.9])) == 0.005 and tolerance(pd.Series([85.0])) == 0.5


def test_importance_on_real_trials(experiments):
    table = trials_table(experiments["asha"])
    imp = hyperparameter_importance(table)
    # every searched hyperparameter that varied across the scored trials, and only those
    # (which of them TPE varied depends on ASHA's timing: a run can keep one schedule)
    scored = table[pd.to_numeric(table["best_metric"], errors="coerce").notna()]
    varied = {name for name in ("learning_rate", "batch_size", "warmup_ratio", "schedule")
              if scored[f"hp_{name}"].astype(str).nunique() > 1}
    assert {"learning_rate", "warmup_ratio"} <= varied  # continuous: always varied
    assert set(imp["hyperparameter"]) == varied
    assert imp["importance"].is_monotonic_decreasing
    assert imp.attrs["reason"] == ""


def test_importance_finds_the_one_that_matters():
    rng = np.random.default_rng(1)
    n = 40
    df = pd.DataFrame(
        {
            "hp_learning_rate": 10 ** rng.uniform(-5, -3, n),
            "hp_noise": rng.uniform(0, 1, n),
            "hp_schedule": rng.choice(["linear", "cosine"], n),
            "hp_constant": 0.1,
        }
    )
    df["best_metric"] = -np.abs(np.log10(df["hp_learning_rate"]) + 4)
    imp = hyperparameter_importance(df)
    assert imp["hyperparameter"].iloc[0] == "learning_rate"
    assert "constant" not in set(imp["hyperparameter"])


def test_importance_too_few_trials():
    df = pd.DataFrame({"hp_lr": [1e-4, 1e-3], "best_metric": [0.8, 0.9]})
    imp = hyperparameter_importance(df)
    assert imp.empty and "need at least 3" in imp.attrs["reason"]
    same = pd.DataFrame({"hp_lr": [1e-4] * 4, "best_metric": [0.8, 0.9, 0.7, 0.6]})
    assert "no hyperparameter varies" in hyperparameter_importance(same).attrs["reason"]
    with pytest.raises(AnalysisArgumentError, match="mode is 'up'"):
        hyperparameter_importance(df, mode="up")
